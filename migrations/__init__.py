"""Alembic migrations: the only way the schema comes into a database."""

# The newest revision. `oracle serve` compares the database's revision with it and skips
# loading Alembic (half a second of start-up) when they agree; a test keeps it true.
HEAD = "0001"
