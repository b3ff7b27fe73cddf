"""Benchmarks (pytest-benchmark). Run: pytest bench --benchmark-enable -p no:cacheprovider

Never part of the test run (testpaths = tests; --benchmark-disable in addopts).
"""

from numbaconv.benchmark import _settle_allocator

_settle_allocator()  # same allocator state for every contender (see numbaconv.benchmark)
