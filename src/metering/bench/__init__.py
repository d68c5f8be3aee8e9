"""Benchmarks of the pipeline against its ceiling and the naive design."""
