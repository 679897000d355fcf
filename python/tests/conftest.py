"""Lets `pytest python/tests` run against the source tree when bqjit is not installed."""
import os
import sys

try:
    import bqjit  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
