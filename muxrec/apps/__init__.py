"""Composition roots: programs that wire pipelines and services together (the demo, the serving
launcher). Like muxrec.cli and muxrec.benchmarks they are the top layer: they may import every layer,
and nothing below them imports them (tests/unit/test_layering.py)."""
