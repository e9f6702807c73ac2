"""SQL text of ``psycopg.sql`` compositions without a connection, for the pure layers (the SQL
adapter has the same :func:`hcbpg.adapters.psql.render`; the pure layers may not import adapters)."""

from __future__ import annotations

from psycopg import sql


def render(statement: "sql.Composable | str") -> str:
    """SQL text of a ``psycopg.sql`` composition, rendered without a database connection."""
    if isinstance(statement, str):
        return statement
    return statement.as_string(None)
