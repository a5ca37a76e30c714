"""Benchmark harness for relaykernel vs ipykernel (issue 6). Run ``python -m benchmarks``."""
