"""Groups in Postgres (implements core.ports.GroupStore).

The group's row is the lock: ``SELECT ... FOR SHARE`` while a message is sent (sends run side by
side), ``FOR UPDATE`` while membership changes (it waits for sends in flight, and sends wait
for it). The lock is held across the JetStream writes of the send or change, which take
milliseconds; that is what makes a removal point exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from core.model import Group, Member, MembershipPeriod
from storage.postgres import Pool, from_timestamp, to_timestamp


def _group(row: tuple[object, ...]) -> Group:
    gid, name, created_by, created_at = row
    return Group(str(gid), str(name), str(created_by), from_timestamp(created_at))  # type: ignore[arg-type]


async def _members(conn: AsyncConnection[TupleRow], group_id: str) -> list[Member]:
    cur = await conn.execute(
        "SELECT user_id, role, joined_id FROM group_members WHERE group_id = %s "
        "ORDER BY joined_id, user_id",
        (group_id,),
    )
    return [Member(u, r, j) for u, r, j in await cur.fetchall()]


class PostgresGroupChange:
    def __init__(self, conn: AsyncConnection[TupleRow], group: Group, members: list[Member]):
        self._conn = conn
        self.group = group
        self.members = members

    async def add(self, user_id: str, role: str, joined_id: str) -> None:
        await self._conn.execute(
            "INSERT INTO group_members (group_id, user_id, role, joined_id) "
            "VALUES (%s, %s, %s, %s)",
            (self.group.id, user_id, role, joined_id),
        )
        await self._conn.execute(
            "INSERT INTO group_membership_periods (group_id, user_id, joined_id) "
            "VALUES (%s, %s, %s)",
            (self.group.id, user_id, joined_id),
        )
        self.members = await _members(self._conn, self.group.id)

    async def remove(self, user_id: str, left_id: str) -> None:
        await self._conn.execute(
            "DELETE FROM group_members WHERE group_id = %s AND user_id = %s",
            (self.group.id, user_id),
        )
        await self._conn.execute(
            "UPDATE group_membership_periods SET left_id = %s "
            "WHERE group_id = %s AND user_id = %s AND left_id IS NULL",
            (left_id, self.group.id, user_id),
        )
        self.members = await _members(self._conn, self.group.id)

    async def set_role(self, user_id: str, role: str) -> None:
        await self._conn.execute(
            "UPDATE group_members SET role = %s WHERE group_id = %s AND user_id = %s",
            (role, self.group.id, user_id),
        )
        self.members = await _members(self._conn, self.group.id)

    async def rename(self, name: str) -> None:
        await self._conn.execute("UPDATE groups SET name = %s WHERE id = %s", (name, self.group.id))
        self.group = Group(self.group.id, name, self.group.created_by, self.group.created_at)


class PostgresGroupStore:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create(self, group: Group, members: list[Member]) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO groups (id, name, created_by, created_at) VALUES (%s, %s, %s, %s)",
                (group.id, group.name, group.created_by, to_timestamp(group.created_at)),
            )
            change = PostgresGroupChange(conn, group, [])
            for m in members:
                await change.add(m.user_id, m.role, m.joined_id)

    async def get(self, group_id: str) -> Group | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, name, created_by, created_at FROM groups WHERE id = %s", (group_id,)
            )
            row = await cur.fetchone()
        return _group(row) if row else None

    async def members(self, group_id: str) -> list[Member]:
        async with self._pool.connection() as conn:
            return await _members(conn, group_id)

    async def groups_of(self, user_id: str) -> list[Group]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT g.id, g.name, g.created_by, g.created_at FROM groups g "
                "JOIN group_members m ON m.group_id = g.id WHERE m.user_id = %s ORDER BY g.id",
                (user_id,),
            )
            return [_group(r) for r in await cur.fetchall()]

    async def periods(self, group_id: str, user_id: str) -> list[MembershipPeriod]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT joined_id, left_id FROM group_membership_periods "
                "WHERE group_id = %s AND user_id = %s ORDER BY joined_id",
                (group_id, user_id),
            )
            return [MembershipPeriod(j, left) for j, left in await cur.fetchall()]

    @asynccontextmanager
    async def sending(self, group_id: str) -> AsyncIterator[list[Member] | None]:
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT 1 FROM groups WHERE id = %s FOR SHARE", (group_id,))
            if await cur.fetchone() is None:
                yield None
                return
            yield await _members(conn, group_id)

    @asynccontextmanager
    async def changing(self, group_id: str) -> AsyncIterator[PostgresGroupChange | None]:
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT id, name, created_by, created_at FROM groups WHERE id = %s FOR UPDATE",
                (group_id,),
            )
            row = await cur.fetchone()
            if row is None:
                yield None
                return
            yield PostgresGroupChange(conn, _group(row), await _members(conn, group_id))
