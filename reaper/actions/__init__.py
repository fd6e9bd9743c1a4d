"""The use cases, one module each; the CLI and the Lambda reach the database only through these."""
