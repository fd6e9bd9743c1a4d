"""Test-wide plugins: the PostgreSQL server fixtures live in their own module."""

pytest_plugins = ("tests.fix_db", "tests.fix_aws")
