"""The PostgreSQL gateway: SQL as named constants, targets, and the one psycopg connection."""
