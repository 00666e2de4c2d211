"""Benchmarks that print their figures (``stream-meta bench NAME``)."""
