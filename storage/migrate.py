"""Schema migrations: the ``.sql`` files in ``storage/migrations``, applied in order, once.

A migration file is named ``NNNN_what.sql``; ``NNNN`` is its version, recorded in the
``schema_migrations`` table when it is applied. Files are never edited after they ship: a change
to the schema is a new file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

# Any fixed bigint will do, as long as nothing else in the database locks the same key; this is
# "jetchat" read as ASCII.
MIGRATION_LOCK_KEY = 0x6A657463686174

_NAME = re.compile(r"^(\d+)_[A-Za-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: bytes


def load_migrations() -> list[Migration]:
    """The migrations shipped in the package, in version order.

    Raises ValueError on a misnamed file or two files with one version, so that a packaging
    mistake fails at start-up rather than skipping a migration."""
    found: dict[int, Migration] = {}
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if match is None:
            raise ValueError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(
                f"migrations {found[version].name!r} and {entry.name!r} share a version"
            )
        found[version] = Migration(version, entry.name, entry.read_bytes())
    return [found[v] for v in sorted(found)]


async def migrate(pool: AsyncConnectionPool[AsyncConnection[TupleRow]]) -> list[int]:
    """Apply every migration not yet applied, in version order; return the versions applied.

    Everything happens in one transaction holding ``pg_advisory_xact_lock``: a second process
    migrating at the same time waits for the first to commit, then finds nothing left to do.
    Either every pending migration is applied or none is. Running it again is a no-op."""
    migrations = load_migrations()
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        applied: list[int] = []
        for migration in migrations:
            if migration.version in done:
                continue
            # No parameters: psycopg sends the file as one simple query, so a file may hold
            # several statements.
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
        return applied
