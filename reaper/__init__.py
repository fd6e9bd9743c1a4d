"""idle-reaper: terminates idle PostgreSQL sessions left behind by serverless functions."""

__version__ = "0.1.0"
