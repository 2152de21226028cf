"""In-memory stand-ins for the core's ports (unit tests only; every adapter is also tested
against its real server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import msgspec

from core.accounts import Accounts
from core.chat import Chat, Limits
from core.close import CloseCode
from core.events import Events
from core.groups import Groups
from core.history import History
from core.ids import MessageIds
from core.messaging import Messaging
from core.model import (
    ChatMessage,
    ConversationSummary,
    Device,
    Group,
    Member,
    MembershipPeriod,
    ReceiptState,
    SendRecord,
    User,
    conversation_members,
)
from core.ports import Clock, GroupChange, InboxEntry, InboxPage
from core.presence import Presence
from core.receipts import Receipts
from core.session import PollTransport


class FakeClock:
    def __init__(self, now: int = 1_790_000_000_000) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now


class MemoryAccounts:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.devices: dict[str, Device] = {}

    async def create_user(self, user: User) -> bool:
        return self.users.setdefault(user.id, user) is user

    async def get_user(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    async def add_device(self, device: Device) -> None:
        self.devices[device.id] = device

    async def device_by_token_hash(self, token_hash: bytes) -> Device | None:
        return next((d for d in self.devices.values() if d.token_hash == token_hash), None)

    async def list_devices(self, user_id: str) -> list[Device]:
        return [d for d in self.devices.values() if d.user_id == user_id and not d.revoked_at]

    async def revoke_device(self, user_id: str, device_id: str, at_ms: int) -> bool:
        d = self.devices.get(device_id)
        if d is None or d.user_id != user_id or d.revoked_at:
            return False
        self.devices[device_id] = msgspec.structs.replace(d, revoked_at=at_ms)
        return True

    async def ping(self) -> None:
        pass


class MemoryInbox:
    """One stream: a global sequence, a subject per user, and JetStream's de-duplication: a
    copy whose key was stored less than ``duplicate_window_s`` ago (by ``clock``) is dropped,
    as the stream's ``duplicate_window`` drops a repeated ``Nats-Msg-Id``; a later one is
    stored again. A dropped copy does not restart the window (nor does it in JetStream)."""

    def __init__(self, clock: Clock, duplicate_window_s: float = 120.0) -> None:
        self.entries: list[tuple[int, str, bytes]] = []
        self.clock = clock
        self.duplicate_window_ms = int(duplicate_window_s * 1000)
        self.keys: dict[str, int] = {}
        """De-duplication key -> when (ms) the copy carrying it was stored."""
        self.watchers: dict[str, list[Callable[[InboxEntry], None]]] = {}
        self.fail_next_append = False

    async def append(self, copies: Sequence[tuple[str, str, bytes]]) -> None:
        if self.fail_next_append:
            self.fail_next_append = False
            raise TimeoutError("jetstream down")
        now = self.clock.now_ms()
        for user, key, data in copies:
            stored_at = self.keys.get(key)
            if stored_at is not None and now - stored_at < self.duplicate_window_ms:
                continue
            self.keys[key] = now
            prev = max((s for s, u, _ in self.entries if u == user), default=0)
            seq = len(self.entries) + 1
            self.entries.append((seq, user, data))
            for cb in self.watchers.get(user, []):
                cb(InboxEntry(seq, prev, data))

    async def read(self, user: str, after_seq: int, limit: int) -> list[InboxEntry]:
        mine = [(s, d) for s, u, d in self.entries if u == user and s > after_seq][:limit]
        out, prev = [], after_seq
        for s, d in mine:
            out.append(InboxEntry(s, prev, d))
            prev = s
        return out

    async def read_page(self, user: str, after_seq: int, limit: int, max_bytes: int) -> InboxPage:
        mine = await self.read(user, after_seq, 1 << 62)
        out, size = [], 0
        for entry in mine[:limit]:
            out.append(entry)
            size += len(entry.data)
            if size >= max_bytes > 0:  # as JetStream: the last entry may cross the bound
                break
        return InboxPage(out, len(out) < len(mine))

    async def bounds(self) -> tuple[int, int]:
        return (1, len(self.entries)) if self.entries else (0, 0)

    async def notify(self, users: Sequence[str], event: bytes) -> None:
        pass

    async def watch(
        self,
        user: str,
        on_entry: Callable[[InboxEntry], None],
        on_event: Callable[[bytes], None],
    ) -> Callable[[], Awaitable[None]]:
        self.watchers.setdefault(user, []).append(on_entry)

        async def stop() -> None:
            self.watchers[user].remove(on_entry)

        return stop

    def count(self, user: str) -> int:
        return sum(1 for _, u, _ in self.entries if u == user)


class MemoryLedger:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], SendRecord] = {}

    async def claim(self, sender: str, client_id: str, record: SendRecord) -> SendRecord | None:
        existing = self.records.setdefault((sender, client_id), record)
        return None if existing is record else existing

    async def complete(self, sender: str, client_id: str, record: SendRecord) -> None:
        self.records[(sender, client_id)] = record


class MemoryCursors:
    def __init__(self) -> None:
        self.positions: dict[tuple[str, str], int] = {}

    async def get(self, user: str, device: str) -> int | None:
        return self.positions.get((user, device))

    async def put(self, user: str, device: str, seq: int) -> None:
        self.positions[(user, device)] = seq


class MemoryHistory:
    """The history stores' contract (tests/integration/test_history_contract.py): pages in id
    order with the bounds excluded, idempotent writes, and each user's 1:1 conversations by
    their newest message (group conversations are not listed here: the core adds them)."""

    def __init__(self) -> None:
        self.messages: dict[tuple[str, str], ChatMessage] = {}

    async def write(self, messages: Sequence[ChatMessage]) -> None:
        for m in messages:
            self.messages[(m.conv, m.id)] = m

    async def page(
        self, conv: str, *, before: str | None = None, after: str | None = None, limit: int
    ) -> list[ChatMessage]:
        ids = sorted(i for c, i in self.messages if c == conv)
        if after is not None:
            ids = [i for i in ids if i > after][:limit]
        else:
            ids = [i for i in ids if before is None or i < before]
            ids = ids[max(len(ids) - limit, 0) :]  # the last ``limit`` (LIMIT 0: none)
        return [self.messages[(conv, i)] for i in ids]

    async def get(self, conv: str, message_id: str) -> ChatMessage | None:
        return self.messages.get((conv, message_id))

    async def conversations(self, user: str, limit: int) -> list[ConversationSummary]:
        newest: dict[str, ChatMessage] = {}
        for (conv, _), m in self.messages.items():
            if user in conversation_members(conv) and (
                conv not in newest or newest[conv].id < m.id
            ):
                newest[conv] = m
        found = sorted(newest.values(), key=lambda m: m.id, reverse=True)[:limit]
        return [ConversationSummary(m.conv, m.id, m.ts) for m in found]

    async def ping(self) -> None:
        pass


class NoGroups:
    """No group exists (groups are tested against Postgres and NATS, in
    tests/integration/test_groups.py); creating one is a test's mistake."""

    async def create(self, group: Group, members: list[Member]) -> None:
        raise AssertionError("groups are not faked")

    async def get(self, group_id: str) -> Group | None:
        return None

    async def members(self, group_id: str) -> list[Member]:
        return []

    async def groups_of(self, user_id: str) -> list[Group]:
        return []

    async def periods(self, group_id: str, user_id: str) -> list[MembershipPeriod]:
        return []

    @contextlib.asynccontextmanager
    async def sending(self, group_id: str) -> AsyncIterator[list[Member] | None]:
        yield None

    @contextlib.asynccontextmanager
    async def changing(self, group_id: str) -> AsyncIterator[GroupChange | None]:
        yield None


class NoGroupLog:
    """Every timeline is empty; with :class:`NoGroups` nothing ever writes to one."""

    async def last(self, group_id: str) -> tuple[int, str]:
        return (0, "")

    async def append(
        self, group_id: str, data: bytes, expected_seq: int, dedupe_key: str
    ) -> tuple[int, bytes] | None:
        raise AssertionError("groups are not faked")


class MemoryReceipts:
    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], ReceiptState] = {}

    async def advance(
        self, conv: str, user: str, delivered: str | None, read: str | None
    ) -> ReceiptState | None:
        old = self.marks.get((conv, user), ReceiptState(user))
        new = ReceiptState(user, max(old.delivered, delivered or ""), max(old.read, read or ""))
        if new == old:
            return None
        self.marks[(conv, user)] = new
        return new

    async def get(self, conv: str, user: str) -> ReceiptState:
        return self.marks.get((conv, user), ReceiptState(user))

    async def all(self, conv: str) -> list[ReceiptState]:
        return [s for (c, _), s in sorted(self.marks.items()) if c == conv]


class NoPresence:
    """Heartbeats go nowhere and nobody is ever online (presence transitions are tested with
    :class:`MemoryPresence`, and against NATS in tests/integration/test_presence.py)."""

    async def beat(self, user: str, device: str, now_ms: int) -> None:
        pass

    async def gone(self, user: str, device: str) -> None:
        pass

    async def run(
        self, on_change: Callable[[str, str, int | None], None], on_ready: Callable[[], None]
    ) -> None:
        on_ready()
        await asyncio.Future()  # until cancelled

    async def last_seen(self, users: list[str]) -> dict[str, int]:
        return {}

    async def set_last_seen(self, user: str, ms: int) -> None:
        pass


class MemoryPresence:
    """Heartbeat entries that expire when the test says so (:meth:`expire`), told to the
    watcher synchronously and in order, as the KV watch does. Last-seen writes wait while
    ``writes`` is clear, standing in for a slow KV round trip."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], int] = {}
        self.seen: dict[str, int] = {}
        self.writes = asyncio.Event()
        self.writes.set()
        self._on_change: Callable[[str, str, int | None], None] | None = None

    async def beat(self, user: str, device: str, now_ms: int) -> None:
        self.entries[(user, device)] = now_ms
        self._tell(user, device, now_ms)

    async def gone(self, user: str, device: str) -> None:
        self.expire(user, device)

    def expire(self, user: str, device: str) -> None:
        del self.entries[(user, device)]
        self._tell(user, device, None)

    async def run(
        self, on_change: Callable[[str, str, int | None], None], on_ready: Callable[[], None]
    ) -> None:
        for (user, device), ms in self.entries.items():
            on_change(user, device, ms)
        on_ready()
        self._on_change = on_change
        await asyncio.Future()  # until cancelled

    async def last_seen(self, users: list[str]) -> dict[str, int]:
        return {u: self.seen[u] for u in users if u in self.seen}

    async def set_last_seen(self, user: str, ms: int) -> None:
        await self.writes.wait()
        self.seen[user] = ms

    def _tell(self, user: str, device: str, ms: int | None) -> None:
        if self._on_change is not None:
            self._on_change(user, device, ms)


class NoSocial:
    """Nobody has contacts and nobody hides (contacts are tested against Postgres)."""

    async def contacts(self, user_id: str) -> list[str]:
        return []

    async def add_contact(self, user_id: str, contact_id: str) -> None:
        raise AssertionError("contacts are not faked")

    async def remove_contact(self, user_id: str, contact_id: str) -> None:
        raise AssertionError("contacts are not faked")

    async def visible(self, user_id: str) -> set[str]:
        return set()

    async def hidden(self, user_ids: list[str]) -> set[str]:
        return set()

    async def set_hidden(self, user_id: str, hidden: bool) -> None:
        raise AssertionError("contacts are not faked")


class NoRevocations:
    async def publish(self, device_id: str) -> None:
        pass

    async def subscribe(self, on_revoked: Callable[[str], None]) -> None:
        pass


class FakeTransport:
    kind = "ws"

    def __init__(self) -> None:
        self.frames: asyncio.Queue[str] = asyncio.Queue()
        self.closed: tuple[CloseCode, str] | None = None

    async def send(self, frame: str) -> None:
        await self.frames.put(frame)

    async def close(self, code: CloseCode, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        self.closed = (CloseCode.ABNORMAL, "aborted")


FakePollTransport = PollTransport  # the real one: it only collects frames


def make_chat(limits: Limits | None = None) -> tuple[Chat, MemoryInbox, MemoryAccounts]:
    clock = FakeClock()
    accounts_store, inbox = MemoryAccounts(), MemoryInbox(clock)
    accounts = Accounts(accounts_store, clock, 3600, NoRevocations())
    groups = NoGroups()
    messaging = Messaging(
        accounts, inbox, MemoryLedger(), MessageIds(clock), 100_000, groups, NoGroupLog()
    )
    history = History(MemoryHistory(), groups)
    events = Events(inbox, groups, clock)
    chat = Chat(
        accounts,
        messaging,
        history,
        inbox,
        MemoryCursors(),
        limits or Limits(),
        Groups(groups, messaging, accounts, clock, 100),
        events,
        clock,
        Receipts(MemoryReceipts(), events, inbox, history),
        Presence(NoPresence(), NoSocial(), clock),
        NoSocial(),
    )
    return chat, inbox, accounts_store


class MemoryGroupChange:
    """A change under :meth:`MemoryGroups.changing`: it works on copies, which the store takes
    when the block ends without an exception (as the Postgres transaction commits)."""

    def __init__(
        self,
        group: Group,
        members: list[Member],
        periods: dict[str, list[MembershipPeriod]],
    ) -> None:
        self.group = group
        self.members = members
        self.periods = periods

    async def add(self, user_id: str, role: str, joined_id: str) -> None:
        if any(m.user_id == user_id for m in self.members):
            raise ValueError(f"{user_id} is already a member")  # the primary key refuses it
        self.members = _in_order([*self.members, Member(user_id, role, joined_id)])
        self.periods[user_id] = [
            *self.periods.get(user_id, []),
            MembershipPeriod(joined_id, None),
        ]

    async def remove(self, user_id: str, left_id: str) -> None:
        self.members = [m for m in self.members if m.user_id != user_id]
        self.periods[user_id] = [
            MembershipPeriod(p.joined_id, left_id) if p.left_id is None else p
            for p in self.periods.get(user_id, [])
        ]

    async def set_role(self, user_id: str, role: str) -> None:
        self.members = [
            msgspec.structs.replace(m, role=role) if m.user_id == user_id else m
            for m in self.members
        ]

    async def rename(self, name: str) -> None:
        self.group = msgspec.structs.replace(self.group, name=name)


def _in_order(members: list[Member]) -> list[Member]:
    """As storage/postgres_groups.py reads them: by joining event, then user id."""
    return sorted(members, key=lambda m: (m.joined_id, m.user_id))


class MemoryGroups:
    """Groups, members and membership periods as storage/postgres_groups.py keeps them.

    One lock per group stands in for the row lock; it is taken exclusively by sends too (the
    real one is shared by sends), which changes nothing for tests that send one at a time."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.member_lists: dict[str, list[Member]] = {}
        self.period_lists: dict[str, dict[str, list[MembershipPeriod]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def create(self, group: Group, members: list[Member]) -> None:
        if group.id in self.groups:
            raise ValueError(f"group {group.id} exists")  # the primary key refuses it
        change = MemoryGroupChange(group, [], {})
        for m in members:
            await change.add(m.user_id, m.role, m.joined_id)
        self._commit(change)

    async def get(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    async def members(self, group_id: str) -> list[Member]:
        return list(self.member_lists.get(group_id, []))

    async def groups_of(self, user_id: str) -> list[Group]:
        return [
            self.groups[gid]
            for gid in sorted(self.groups)
            if any(m.user_id == user_id for m in self.member_lists[gid])
        ]

    async def periods(self, group_id: str, user_id: str) -> list[MembershipPeriod]:
        found = self.period_lists.get(group_id, {}).get(user_id, [])
        return sorted(found, key=lambda p: p.joined_id)

    @contextlib.asynccontextmanager
    async def sending(self, group_id: str) -> AsyncIterator[list[Member] | None]:
        async with self._lock(group_id):
            yield await self.members(group_id) if group_id in self.groups else None

    @contextlib.asynccontextmanager
    async def changing(self, group_id: str) -> AsyncIterator[GroupChange | None]:
        async with self._lock(group_id):
            group = self.groups.get(group_id)
            if group is None:
                yield None
                return
            change = MemoryGroupChange(
                group,
                list(self.member_lists[group_id]),
                {u: list(ps) for u, ps in self.period_lists[group_id].items()},
            )
            yield change
            self._commit(change)  # not reached when the block raised: nothing is kept

    def _lock(self, group_id: str) -> asyncio.Lock:
        return self._locks.setdefault(group_id, asyncio.Lock())

    def _commit(self, change: MemoryGroupChange) -> None:
        gid = change.group.id
        self.groups[gid] = change.group
        self.member_lists[gid] = change.members
        self.period_lists[gid] = change.periods


class MemoryGroupLog:
    """The CHAT_GROUPS stream: one sequence over every group's subject. As JetStream checks a
    publish, a repeated ``Nats-Msg-Id`` within the duplicate window (by ``clock``) is answered
    with the first write's sequence before anything else is checked; otherwise the write is
    refused (None) unless the group's last sequence is still ``expected_seq``.

    ``rivals`` are writes of other processes: each lands just before this process's next
    append to its group, so that append finds the timeline moved on."""

    def __init__(self, clock: Clock, duplicate_window_s: float = 120.0) -> None:
        self.clock = clock
        self.duplicate_window_ms = int(duplicate_window_s * 1000)
        self.entries: list[tuple[int, str, bytes]] = []
        """``(sequence, group id, data)`` in stream order."""
        self.keys: dict[str, tuple[int, int]] = {}
        """De-duplication key -> (when stored, ms; its sequence)."""
        self.rivals: list[tuple[str, bytes]] = []

    async def last(self, group_id: str) -> tuple[int, str]:
        for seq, gid, data in reversed(self.entries):
            if gid == group_id:
                return seq, msgspec.json.decode(data, type=ChatMessage).id
        return (0, "")

    async def append(
        self, group_id: str, data: bytes, expected_seq: int, dedupe_key: str
    ) -> tuple[int, bytes] | None:
        for rival in [r for r in self.rivals if r[0] == group_id]:
            self.rivals.remove(rival)
            self._store(group_id, rival[1])
        now = self.clock.now_ms()
        stored = self.keys.get(dedupe_key)
        if stored is not None and now - stored[0] < self.duplicate_window_ms:
            return stored[1], self.entries[stored[1] - 1][2]
        if (await self.last(group_id))[0] != expected_seq:
            return None
        seq = self._store(group_id, data)
        self.keys[dedupe_key] = (now, seq)
        return seq, data

    def timeline(self, group_id: str) -> list[ChatMessage]:
        """The group's entries in sequence order."""
        return [
            msgspec.json.decode(data, type=ChatMessage)
            for _, gid, data in self.entries
            if gid == group_id
        ]

    def _store(self, group_id: str, data: bytes) -> int:
        seq = len(self.entries) + 1
        self.entries.append((seq, group_id, data))
        return seq


class EventInbox(MemoryInbox):
    """A :class:`MemoryInbox` that keeps what :meth:`notify` sends, per user, for the test to
    read (JetStream keeps none of it: live events reach connected devices at most once)."""

    def __init__(self, clock: Clock, duplicate_window_s: float = 120.0) -> None:
        super().__init__(clock, duplicate_window_s)
        self.events: list[tuple[str, bytes]] = []

    async def notify(self, users: Sequence[str], event: bytes) -> None:
        self.events.extend((user, event) for user in users)

    def events_of(self, user: str) -> list[bytes]:
        return [event for u, event in self.events if u == user]
