"""History in Postgres (implements core.ports.HistoryStore) for the embedded default.

One table, primary key ``(conv, id)``: a conversation's messages sit together in the index in id
order, so every page is one index range scan. Writes are ``ON CONFLICT DO NOTHING``: a replayed
batch changes nothing.

A batch is one transaction: refused (:class:`core.ports.Refused`) when Postgres refuses one of
its values, which one unsaid (the archiver finds it by writing them one by one). Refusals are
the errors about the data, not the server: see :func:`refusal`.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from core.model import (
    HISTORY_COLUMNS,
    ChatMessage,
    ConversationSummary,
    conversation_members,
    message_from_row,
)
from core.ports import Refused
from storage.postgres import Pool

_COLUMNS = HISTORY_COLUMNS

REFUSED_SQLSTATE_CLASSES = ("22", "23", "54")
"""Data exception (a NUL in text, a number out of range: psycopg raises these before sending,
too), integrity constraint violation, program limit exceeded (a key too long for its index):
the same values fail the same way every time. Every other error (connection, 08; lock or
serialisation conflict, 40; server shutting down, 57; out of resources, 53) may pass later."""


def refusal(exc: BaseException) -> str | None:
    """Why Postgres will never take this write, or None if it may take it later. The reason
    is the error's class and its first line (never the DETAIL, which may quote the row)."""
    if isinstance(exc, UnicodeEncodeError):  # text the connection's encoding cannot hold
        return f"UnicodeEncodeError: {exc.reason}"
    if not isinstance(exc, psycopg.Error):
        return None
    refused = isinstance(exc, psycopg.DataError | psycopg.IntegrityError) or (
        exc.sqlstate or ""
    ).startswith(REFUSED_SQLSTATE_CLASSES)
    if not refused:
        return None
    return f"{type(exc).__name__}: {exc.diag.message_primary or str(exc)}"


class PostgresHistoryStore:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def write(self, messages: Sequence[ChatMessage]) -> None:
        if not messages:
            return
        try:
            await self._write(messages)
        except (psycopg.Error, UnicodeEncodeError) as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            raise Refused(messages[0].id if len(messages) == 1 else "", reason) from exc

    async def _write(self, messages: Sequence[ChatMessage]) -> None:
        latest: dict[tuple[str, str], ChatMessage] = {}
        for m in messages:
            for user in conversation_members(m.conv):
                key = (user, m.conv)
                if key not in latest or latest[key].id < m.id:
                    latest[key] = m
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO messages ({_COLUMNS}) "  # noqa: S608 - constant column list
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT (conv, id) DO NOTHING",
                (
                    [m.conv for m in messages],
                    [m.id for m in messages],
                    [m.sender for m in messages],
                    [m.sender_device for m in messages],
                    [m.to for m in messages],
                    [m.text for m in messages],
                    [m.ts for m in messages],
                    [m.client_id for m in messages],
                    [m.event for m in messages],
                    [m.target for m in messages],
                ),
            )
            await conn.execute(
                "INSERT INTO conversations_by_user AS c (user_id, conv, last_id, last_ts) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) "
                "ON CONFLICT (user_id, conv) DO UPDATE "
                "SET last_id = excluded.last_id, last_ts = excluded.last_ts "
                "WHERE c.last_id < excluded.last_id",
                (
                    [user for user, _ in latest],
                    [conv for _, conv in latest],
                    [m.id for m in latest.values()],
                    [m.ts for m in latest.values()],
                ),
            )

    async def page(
        self,
        conv: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int,
    ) -> list[ChatMessage]:
        select = f"SELECT {_COLUMNS} FROM messages WHERE conv = %s"  # noqa: S608
        async with self._pool.connection() as conn:
            if after is not None:
                cur = await conn.execute(
                    f"{select} AND id > %s ORDER BY id ASC LIMIT %s", (conv, after, limit)
                )
                return [message_from_row(r) for r in await cur.fetchall()]
            if before is not None:
                cur = await conn.execute(
                    f"{select} AND id < %s ORDER BY id DESC LIMIT %s", (conv, before, limit)
                )
            else:
                cur = await conn.execute(f"{select} ORDER BY id DESC LIMIT %s", (conv, limit))
            return [message_from_row(r) for r in reversed(await cur.fetchall())]

    async def get(self, conv: str, message_id: str) -> ChatMessage | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE conv = %s AND id = %s",  # noqa: S608
                (conv, message_id),
            )
            row = await cur.fetchone()
        return message_from_row(row) if row else None

    async def ping(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1 FROM messages LIMIT 1")

    async def conversations(self, user: str, limit: int) -> list[ConversationSummary]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT conv, last_id, last_ts FROM conversations_by_user "
                "WHERE user_id = %s ORDER BY last_id DESC LIMIT %s",
                (user, limit),
            )
            return [ConversationSummary(c, i, t) for c, i, t in await cur.fetchall()]
