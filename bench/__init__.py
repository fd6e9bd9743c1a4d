"""Benchmarks of idle-reaper against the bare SQL a DBA would type (`make bench`, `python -m
bench`); docs/benchmarks.md says what is measured and how to read the results."""
