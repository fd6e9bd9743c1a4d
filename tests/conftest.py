"""Test-wide plugins: the PostgreSQL server fixtures live in their own modules."""

pytest_plugins = ("tests.fix_db", "tests.fix_aws")
