"""kvern's benchmark harness: `python -m bench [B1 B2 ...]` (see BENCHMARKS.md)."""
