"""Benchmarks for Conveyor (not tests): run them by hand, read the numbers. See bench/README.md."""
