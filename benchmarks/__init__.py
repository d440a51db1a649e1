"""Benchmarks: the `muxrec bench ...` commands, apart from the product (as vLLM keeps `vllm bench`).

Each one prints one JSON object as its last line and writes its table and plot under
docs/benchmarks/. They may import every layer (pipelines, services, the composition roots in
muxrec.apps); nothing imports them but the CLI's `bench` subcommand (tests/unit/test_layering.py).
"""
