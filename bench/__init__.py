"""Benchmarks of idle-reaper against the bare SQL a DBA would type (`make bench`).

`python -m bench` starts throwaway PostgreSQL servers, fills them with thousands of idle
sessions from simulated Lambda applications, and times the reaper's pass beside the one-statement
equivalent; it also times the Lambda handler's cold import and measures its peak memory. See
docs/benchmarks.md for what is measured and how to read the results.
"""
