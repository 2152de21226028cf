"""Contacts, group peers and the presence setting in Postgres (core.ports.SocialStore)."""

from __future__ import annotations

from storage.postgres import Pool


class PostgresSocialStore:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def contacts(self, user_id: str) -> list[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT contact_id FROM contacts WHERE user_id = %s ORDER BY contact_id",
                (user_id,),
            )
            return [r[0] for r in await cur.fetchall()]

    async def add_contact(self, user_id: str, contact_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO contacts (user_id, contact_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (user_id, contact_id),
            )

    async def remove_contact(self, user_id: str, contact_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "DELETE FROM contacts WHERE user_id = %s AND contact_id = %s",
                (user_id, contact_id),
            )

    async def visible(self, user_id: str) -> set[str]:
        """Whose presence the user may see: their contacts and their groups' members."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT contact_id FROM contacts WHERE user_id = %s "
                "UNION SELECT o.user_id FROM group_members m "
                "JOIN group_members o ON o.group_id = m.group_id WHERE m.user_id = %s",
                (user_id, user_id),
            )
            return {r[0] for r in await cur.fetchall()} - {user_id}

    async def hidden(self, user_ids: list[str]) -> set[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM users WHERE id = ANY(%s) AND hide_presence", (user_ids,)
            )
            return {r[0] for r in await cur.fetchall()}

    async def set_hidden(self, user_id: str, hidden: bool) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE users SET hide_presence = %s WHERE id = %s", (hidden, user_id)
            )
