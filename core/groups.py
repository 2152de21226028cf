"""Groups: create, rename, members and admins. Every change is also an event in the group's
timeline ("alice added bob"), copied to the members like a message."""

from __future__ import annotations

import secrets
import uuid

import msgspec

from core.accounts import Accounts
from core.errors import ChatError, ErrorCode
from core.identifiers import GROUP_ID_RE, MAX_GROUP_NAME_CHARS, clean_name
from core.messaging import Messaging
from core.model import ChatMessage, Group, Member, group_conversation
from core.ports import Clock, GroupChange, GroupStore

ADMIN, MEMBER = "admin", "member"


class GroupInfo(msgspec.Struct, frozen=True):
    id: str
    conv: str
    name: str
    created_by: str
    created_at: int
    members: list[Member]


class Groups:
    """The creator is the first admin; admins add, remove and promote members and rename the
    group; anyone may leave. A group holds at most ``max_members`` members."""

    def __init__(
        self,
        store: GroupStore,
        messaging: Messaging,
        accounts: Accounts,
        clock: Clock,
        max_members: int,
    ) -> None:
        self._store = store
        self._messaging = messaging
        self._accounts = accounts
        self._clock = clock
        self.max_members = max_members

    async def create(
        self, creator: str, device: str, name: str, member_ids: list[str]
    ) -> GroupInfo:
        name = _check_name(name)
        others = sorted(set(member_ids) - {creator})
        if len(others) + 1 > self.max_members:
            raise ChatError(
                ErrorCode.GROUP_FULL, f"a group holds at most {self.max_members} members"
            )
        for user in others:
            if not await self._accounts.exists(user):
                raise ChatError(ErrorCode.NOT_FOUND, f"no user {user!r}")
        group = Group(secrets.token_hex(8), name, creator, self._clock.now_ms())
        event, data = await self._event(
            group.id, creator, device, "created", "", f"{creator} created {name!r}"
        )
        members = [Member(creator, ADMIN, event.id)] + [Member(u, MEMBER, event.id) for u in others]
        await self._store.create(group, members)
        await self._messaging.deliver(event.id, data, [m.user_id for m in members])
        return _info(group, members)

    async def info(self, user: str, group_id: str) -> GroupInfo:
        _check_group_id(group_id)
        group = await self._store.get(group_id)
        members = await self._store.members(group_id) if group else []
        if group is None or user not in {m.user_id for m in members}:
            raise ChatError(ErrorCode.NOT_FOUND, f"no group {group_id!r} of yours")
        return _info(group, members)

    async def mine(self, user: str) -> list[Group]:
        return await self._store.groups_of(user)

    async def rename(self, actor: str, device: str, group_id: str, name: str) -> GroupInfo:
        _check_group_id(group_id)
        name = _check_name(name)
        async with self._store.changing(group_id) as change:
            _require_admin(change, actor, group_id)
            assert change is not None
            event, data = await self._event(
                group_id, actor, device, "renamed", "", f"{actor} renamed the group to {name!r}"
            )
            await change.rename(name)
            await self._messaging.deliver(event.id, data, [m.user_id for m in change.members])
            return _info(change.group, change.members)

    async def add(self, actor: str, device: str, group_id: str, user: str) -> GroupInfo:
        _check_group_id(group_id)
        async with self._store.changing(group_id) as change:
            _require_admin(change, actor, group_id)
            assert change is not None
            if user in {m.user_id for m in change.members}:
                raise ChatError(ErrorCode.INVALID_ARGUMENT, f"{user!r} is already a member")
            if len(change.members) >= self.max_members:
                raise ChatError(
                    ErrorCode.GROUP_FULL, f"the group has its {self.max_members} members"
                )
            if not await self._accounts.exists(user):
                raise ChatError(ErrorCode.NOT_FOUND, f"no user {user!r}")
            event, data = await self._event(
                group_id, actor, device, "added", user, f"{actor} added {user}"
            )
            await change.add(user, MEMBER, event.id)
            await self._messaging.deliver(event.id, data, [m.user_id for m in change.members])
            return _info(change.group, change.members)

    async def remove(self, actor: str, device: str, group_id: str, user: str) -> None:
        """Remove a member (admins), or leave (``user == actor``). The removed user gets the
        removal event, then nothing more from the group."""
        _check_group_id(group_id)
        async with self._store.changing(group_id) as change:
            if change is None or actor not in {m.user_id for m in change.members}:
                raise ChatError(ErrorCode.NOT_FOUND, f"no group {group_id!r} of yours")
            if user != actor:
                _require_admin(change, actor, group_id)
            if user not in {m.user_id for m in change.members}:
                raise ChatError(ErrorCode.NOT_FOUND, f"{user!r} is not a member")
            kind, text = (
                ("left", f"{user} left")
                if user == actor
                else (
                    "removed",
                    f"{actor} removed {user}",
                )
            )
            event, data = await self._event(group_id, actor, device, kind, user, text)
            await change.remove(user, event.id)
            await self._messaging.deliver(
                event.id, data, [m.user_id for m in change.members] + [user]
            )

    async def promote(self, actor: str, device: str, group_id: str, user: str) -> GroupInfo:
        _check_group_id(group_id)
        async with self._store.changing(group_id) as change:
            _require_admin(change, actor, group_id)
            assert change is not None
            if user not in {m.user_id for m in change.members}:
                raise ChatError(ErrorCode.NOT_FOUND, f"{user!r} is not a member")
            event, data = await self._event(
                group_id, actor, device, "promoted", user, f"{actor} made {user} an admin"
            )
            await change.set_role(user, ADMIN)
            await self._messaging.deliver(event.id, data, [m.user_id for m in change.members])
            return _info(change.group, change.members)

    async def _event(
        self, group_id: str, actor: str, device: str, kind: str, target: str, text: str
    ) -> tuple[ChatMessage, bytes]:
        """Place a membership event in the timeline: the event and its stored bytes."""
        conv = group_conversation(group_id)
        client_id = f"event-{uuid.uuid4().hex}"
        return await self._messaging.place(
            group_id,
            client_id,
            lambda msg_id, ts: ChatMessage(
                id=msg_id,
                conv=conv,
                sender=actor,
                sender_device=device,
                to=conv,
                text=text,
                ts=ts,
                client_id=client_id,
                event=kind,
                target=target,
            ),
        )


def _require_admin(change: GroupChange | None, actor: str, group_id: str) -> None:
    if change is None:
        raise ChatError(ErrorCode.NOT_FOUND, f"no group {group_id!r}")
    roles = {m.user_id: m.role for m in change.members}
    if actor not in roles:
        raise ChatError(ErrorCode.NOT_FOUND, f"no group {group_id!r} of yours")
    if roles[actor] != ADMIN:
        raise ChatError(ErrorCode.FORBIDDEN, "only the group's admins may do that")


def _check_name(name: str) -> str:
    """The name as stored (trimmed), or ChatError(INVALID_ARGUMENT)."""
    return clean_name(name, "name", MAX_GROUP_NAME_CHARS, required=True)


def _check_group_id(group_id: str) -> None:
    """An id that cannot be a group's is no group (checked before any store sees it)."""
    if not GROUP_ID_RE.fullmatch(group_id):
        raise ChatError(ErrorCode.NOT_FOUND, f"no group {group_id!r:.80}")


def _info(group: Group, members: list[Member]) -> GroupInfo:
    return GroupInfo(
        group.id,
        group_conversation(group.id),
        group.name,
        group.created_by,
        group.created_at,
        members,
    )
