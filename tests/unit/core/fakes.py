"""In-memory stand-ins for the core's ports (unit tests only; every adapter is also tested
against its real server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from core.accounts import Accounts
from core.chat import Chat, Limits
from core.events import Events
from core.groups import Groups
from core.history import History
from core.ids import MessageIds
from core.messaging import Messaging
from core.model import ChatMessage, ConversationSummary, Device, ReceiptState, SendRecord, User
from core.ports import InboxEntry, InboxPage
from core.presence import Presence
from core.receipts import Receipts


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
    """One stream: a global sequence, a subject per user, duplicate keys remembered forever."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str, bytes]] = []
        self.keys: set[str] = set()
        self.watchers: dict[str, list[Callable[[InboxEntry], None]]] = {}
        self.fail_next_append = False

    async def append(self, copies: Sequence[tuple[str, str, bytes]]) -> None:
        if self.fail_next_append:
            self.fail_next_append = False
            raise TimeoutError("jetstream down")
        for user, key, data in copies:
            if key in self.keys:
                continue
            self.keys.add(key)
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
            ids = [i for i in ids if before is None or i < before][-limit:]
        return [self.messages[(conv, i)] for i in ids]

    async def get(self, conv: str, message_id: str) -> ChatMessage | None:
        return self.messages.get((conv, message_id))

    async def conversations(self, user: str, limit: int) -> list[ConversationSummary]:
        return []

    async def ping(self) -> None:
        pass


class NoGroups:
    """Groups are tested against Postgres and NATS (tests/integration/test_groups.py)."""

    async def groups_of(self, user_id: str) -> list[object]:
        return []

    async def periods(self, group_id: str, user_id: str) -> list[object]:
        return []


class NoGroupLog:
    pass


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
    """Presence is tested against NATS (tests/integration/test_presence.py)."""

    async def beat(self, user: str, device: str, now_ms: int) -> None:
        pass

    async def gone(self, user: str, device: str) -> None:
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
    async def visible(self, user_id: str) -> set[str]:
        return set()

    async def hidden(self, user_ids: list[str]) -> set[str]:
        return set()


class NoRevocations:
    async def publish(self, device_id: str) -> None:
        pass

    async def subscribe(self, on_revoked: Callable[[str], None]) -> None:
        pass


class FakeTransport:
    kind = "ws"

    def __init__(self) -> None:
        self.frames: asyncio.Queue[str] = asyncio.Queue()
        self.closed: tuple[int, str] | None = None

    async def send(self, frame: str) -> None:
        await self.frames.put(frame)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        self.closed = (1006, "aborted")


class FakePollTransport:
    """One long poll's answer: the frames sent, never waiting."""

    kind = "longpoll"

    def __init__(self) -> None:
        self.frames: list[str] = []

    async def send(self, frame: str) -> None:
        self.frames.append(frame)

    async def close(self, code: int, reason: str) -> None:
        pass

    def abort(self) -> None:
        pass


def make_chat(limits: Limits | None = None) -> tuple[Chat, MemoryInbox, MemoryAccounts]:
    clock = FakeClock()
    accounts_store, inbox = MemoryAccounts(), MemoryInbox()
    accounts = Accounts(accounts_store, clock, 3600, NoRevocations())
    groups = NoGroups()
    messaging = Messaging(
        accounts, inbox, MemoryLedger(), MessageIds(clock), 100_000, groups, NoGroupLog()
    )
    history = History(MemoryHistory(), groups)
    events = Events(inbox, groups, clock, 1.0, 5)
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
        Presence(NoPresence(), NoSocial(), clock),  # type: ignore[arg-type]
        NoSocial(),  # type: ignore[arg-type]
    )
    return chat, inbox, accounts_store
