"""The benchmark's one error type."""

from __future__ import annotations


class BenchError(Exception):
    """A measurement would be wrong or cannot be taken: the server or sessions are not as set up."""
