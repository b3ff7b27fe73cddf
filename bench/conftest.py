"""Benchmarks (pytest-benchmark). Run: pytest bench --benchmark-enable -p no:cacheprovider

Never part of the test run (testpaths = tests; --benchmark-disable in addopts).
"""
