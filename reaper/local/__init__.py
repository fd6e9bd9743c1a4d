"""Throwaway local PostgreSQL clusters, roles and sessions for the demo, tests and bench.

Not part of the Lambda artifact: nothing in the product imports it but `reaper demo`.
"""
