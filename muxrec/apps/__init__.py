"""Composition roots: programs that wire pipelines and services together (the demo, the serving
benchmark). Like muxrec.cli, they may import every layer; nothing imports them but the CLI."""
