"""The small protocols through which the core talks to the outside.

Adapters implement them (``jetstream/`` for NATS, ``storage/`` for Postgres, ``frontends/`` for
transports); core tests use in-memory fakes. Each method says what it promises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple, Protocol, TypeVar

import msgspec

from core.close import CloseCode
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
)


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in ms since the epoch."""
        ...


class AccountStore(Protocol):
    """Accounts and devices (Postgres in production and in the embedded default).

    Every method is atomic on its own; none spans several calls."""

    async def create_user(self, user: User) -> bool:
        """Insert a user. Returns False, changing nothing, if the id is taken."""
        ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def add_device(self, device: Device) -> None:
        """Insert a device; its id and token hash are fresh random values."""
        ...

    async def device_by_token_hash(self, token_hash: bytes) -> Device | None:
        """The device holding this token, revoked or not (the caller checks)."""
        ...

    async def list_devices(self, user_id: str) -> list[Device]:
        """The user's devices that are not revoked, oldest first."""
        ...

    async def revoke_device(self, user_id: str, device_id: str, at_ms: int) -> bool:
        """Mark the device revoked. False if the user has no such live device."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot answer (readiness)."""
        ...


class Refused(Exception):
    """A history store will never store this message as it is: the store's answer to the value
    itself (Postgres refusing a NUL in text or a key too long for its index, a constraint
    violated, Cassandra's InvalidRequest, the driver unable to encode a value), not to the
    store's state. Writing it again, now or in an hour, fails the same way, so the archiver
    parks the message instead of retrying it (core/archive.py).

    Every other exception of :meth:`HistoryStore.write` means "maybe later" (connection lost,
    timeout, not enough replicas, overload) and is retried.

    ``message_id``: the refused message, or "" when the store cannot tell which message of a
    batch it was (Postgres writes a batch in one statement); a write of one message names it.
    ``reason``: the store's error, short (one line, at most :data:`REASON_CHARS`) and without
    the message's text, so that it may be logged and kept next to the parked message."""

    REASON_CHARS = 200

    def __init__(self, message_id: str, reason: str) -> None:
        self.message_id = message_id
        self.reason = (reason.splitlines() or [""])[0][: self.REASON_CHARS]
        super().__init__(message_id, self.reason)


class HistoryStore(Protocol):
    """History kept forever: Cassandra in production, Postgres in the embedded default. Both
    pass the same contract tests (tests/integration/test_history_contract.py).

    Order within a conversation is the order of message ids (fixed-width hex, so byte order is
    time order). Pages are always returned in ascending id order."""

    async def write(self, messages: Sequence[ChatMessage]) -> None:
        """Store messages and update each participant's conversation list. Idempotent: a
        message already stored (same conversation and id) overwrites itself, never
        duplicates, so a batch may be replayed whole after a crash. Each message is atomic on
        its own; a batch is not (after a failure any subset may be stored: replay it).

        Raises :class:`Refused` when a message of the batch can never be stored (the rest of
        the batch may or may not be: write them again without it); any other exception is
        worth retrying."""
        ...

    async def page(
        self,
        conv: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int,
    ) -> list[ChatMessage]:
        """Up to ``limit`` messages of ``conv``: the newest ones (neither bound), those just
        before ``before`` or just after ``after`` (bounds excluded). Ascending by id."""
        ...

    async def get(self, conv: str, message_id: str) -> ChatMessage | None: ...

    async def conversations(self, user: str, limit: int) -> list[ConversationSummary]:
        """The user's conversations, most recent message first."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot answer (readiness)."""
        ...


class GroupChange(Protocol):
    """A group's membership being changed, under the group's exclusive lock (see
    :meth:`GroupStore.changing`). Every method applies at once within the lock's transaction."""

    group: Group
    members: list[Member]

    async def add(self, user_id: str, role: str, joined_id: str) -> None: ...

    async def remove(self, user_id: str, left_id: str) -> None: ...

    async def set_role(self, user_id: str, role: str) -> None: ...

    async def rename(self, name: str) -> None: ...


class GroupStore(Protocol):
    """Groups and their members (Postgres).

    Membership and group messages are linearised by one lock per group: a send holds it
    shared (:meth:`sending`) from reading the members until every copy is written, a
    membership change holds it exclusively (:meth:`changing`). So a message is copied to
    exactly the members of the moment its place in the timeline was taken: a removed member
    gets nothing after the removal event, a new member everything after the joining event."""

    async def create(self, group: Group, members: list[Member]) -> None:
        """Create the group with its first members (one transaction)."""
        ...

    async def get(self, group_id: str) -> Group | None: ...

    async def members(self, group_id: str) -> list[Member]: ...

    async def groups_of(self, user_id: str) -> list[Group]:
        """Groups the user is a member of now."""
        ...

    async def periods(self, group_id: str, user_id: str) -> list[MembershipPeriod]:
        """Every stretch of the timeline the user belonged to the group, oldest first."""
        ...

    def sending(self, group_id: str) -> AbstractAsyncContextManager[list[Member] | None]:
        """Hold the group's lock shared; yields its members now (None: no such group)."""
        ...

    def changing(self, group_id: str) -> AbstractAsyncContextManager[GroupChange | None]:
        """Hold the group's lock exclusively; yields the change (None: no such group).
        Everything done through it commits when the block exits without an exception."""
        ...


class GroupLog(Protocol):
    """Each group's timeline in JetStream (``chat.group.<id>``): the group's sequence is the
    one order of its messages, and message ids are assigned to follow it."""

    async def last(self, group_id: str) -> tuple[int, str]:
        """``(sequence, message id)`` of the group's newest timeline entry; (0, "") if none."""
        ...

    async def append(
        self, group_id: str, data: bytes, expected_seq: int, dedupe_key: str
    ) -> tuple[int, bytes] | None:
        """Write ``data`` if the group's newest entry is still ``expected_seq``; None if another
        writer came first (read :meth:`last` again and retry). Returns the entry's sequence
        and its stored bytes: those of the first write if ``dedupe_key`` was written within
        the duplicate window (a resend)."""
        ...


class ReceiptStore(Protocol):
    """Delivered and read marks per (conversation, member), shared by every process."""

    async def advance(
        self, conv: str, user: str, delivered: str | None, read: str | None
    ) -> ReceiptState | None:
        """Move the marks forward, never back (an atomic compare-and-set, retried). Returns
        the new state if a mark moved, else None."""
        ...

    async def get(self, conv: str, user: str) -> ReceiptState: ...

    async def all(self, conv: str) -> list[ReceiptState]:
        """Every member's marks in the conversation (members without any: absent)."""
        ...


class SocialStore(Protocol):
    """Contacts and the presence privacy setting (Postgres)."""

    async def contacts(self, user_id: str) -> list[str]: ...

    async def add_contact(self, user_id: str, contact_id: str) -> None: ...

    async def remove_contact(self, user_id: str, contact_id: str) -> None: ...

    async def visible(self, user_id: str) -> set[str]:
        """Whose presence the user may see: their contacts and their groups' members."""
        ...

    async def hidden(self, user_ids: list[str]) -> set[str]:
        """Those of the users who hide their presence and last seen."""
        ...

    async def set_hidden(self, user_id: str, hidden: bool) -> None: ...


class PresenceStore(Protocol):
    """Device heartbeats in a KV bucket whose entries expire after the presence TTL, with
    expiry markers, so that watchers are told when a device goes silent (no scanning)."""

    async def beat(self, user: str, device: str, now_ms: int) -> None:
        """The device is alive now (creates or refreshes its entry)."""
        ...

    async def gone(self, user: str, device: str) -> None:
        """The device logged out: remove its entry now."""
        ...

    async def run(
        self, on_change: Callable[[str, str, int | None], None], on_ready: Callable[[], None]
    ) -> None:
        """Watch every entry until cancelled: ``on_change(user, device, ms)`` for a beat,
        ``(user, device, None)`` when an entry expires or is removed. First the entries that
        exist, then ``on_ready()``, then the changes as they happen."""
        ...

    async def last_seen(self, users: list[str]) -> dict[str, int]: ...

    async def set_last_seen(self, user: str, ms: int) -> None: ...


class InboxEntry(msgspec.Struct, frozen=True, gc=False):
    """One message in a user's inbox.

    ``seq`` is its JetStream stream sequence: increasing within an inbox, with gaps (other
    users' messages sit in between). ``prev_seq`` is the sequence of the previous message in the
    same inbox (0 if none), which lets a reader prove it missed nothing."""

    seq: int
    prev_seq: int
    data: bytes


class InboxPage(msgspec.Struct, frozen=True):
    """A read of an inbox: ``entries`` in order, and whether the inbox held more after them
    at the time of the read."""

    entries: list[InboxEntry]
    more: bool


class InboxCopy(msgspec.Struct, frozen=True, gc=False):
    """One copy of a message in ``user``'s inbox, as a durable consumer of the inboxes (the
    archiver; the push worker) receives it: ``data`` is the stored message, undecoded;
    ``seq`` its inbox stream sequence (0: not known)."""

    user: str
    data: bytes
    seq: int = 0


class DeadLetters(Protocol):
    """Where the archiver parks inbox messages the history store refused for good, for an
    operator to look at (JetStream stream ``CHAT_DEAD``; docs/operations.md)."""

    async def park(self, copy: InboxCopy, message_id: str, reason: str) -> None:
        """Keep the copy's bytes with the reason, its inbox sequence and the message id.
        Returns only once the entry is durable (JetStream acknowledged it); raises otherwise,
        and then the caller must not acknowledge the original. Parking the same copy again
        (a redelivery after a crash) within the stream's duplicate window stores it once."""
        ...


Item_contra = TypeVar("Item_contra", contravariant=True)


class BatchHandler(Protocol[Item_contra]):
    """The core's side of a durable stream consumer (jetstream/consumer.py runs the other side:
    fetching, acknowledging, restarting under the supervisor)."""

    async def handle(self, batch: Sequence[Item_contra]) -> None:
        """Process a batch, in stream order. Returning means done: every item is acknowledged
        and never delivered again. Raising (or being cancelled) means none is: the whole batch
        is delivered again later, maybe to another process, so handling must be idempotent.
        Delivery is at least once; after a redelivery, batches may overlap or come out of
        order. A handler that cannot use an item (undecodable) logs it and returns normally:
        raising for it would redeliver it forever."""
        ...


class InboxLog(Protocol):
    """Durable per-user inboxes (one JetStream stream, a subject per user)."""

    async def append(self, copies: Sequence[tuple[str, str, bytes]]) -> None:
        """Store each ``(user, dedupe_key, payload)`` in that user's inbox.

        Returns only when JetStream acknowledged every copy (they are then durable); raises
        ChatError(UNAVAILABLE) if that did not happen in time, in which case any subset may be
        stored. A copy whose dedupe key was stored within the stream's duplicate window is not
        stored again, so retrying the whole call is safe. No order is promised between copies
        of one call."""
        ...

    async def read(self, user: str, after_seq: int, limit: int) -> list[InboxEntry]:
        """Up to ``limit`` entries of the user's inbox with ``seq > after_seq``, in order and
        without gaps. Fewer than ``limit`` means the inbox had no more at the time of the read."""
        ...

    async def read_page(self, user: str, after_seq: int, limit: int, max_bytes: int) -> InboxPage:
        """Like :meth:`read`, but the page also ends once its messages reach ``max_bytes``
        (the last one may cross it; 0: no byte bound), so one read holds bounded memory
        whatever the message sizes. It says whether more entries followed at the time of the
        read, so a short page does not mean the end."""
        ...

    async def bounds(self) -> tuple[int, int]:
        """``(first_seq, last_seq)`` the stream holds now; first_seq > last_seq when empty."""
        ...

    async def watch(
        self,
        user: str,
        on_entry: Callable[[InboxEntry], None],
        on_event: Callable[[bytes], None],
    ) -> Callable[[], Awaitable[None]]:
        """Call ``on_entry`` for each entry appended to the user's inbox from now on (at most
        once, in order; entries may be missed, which ``prev_seq`` reveals), and ``on_event``
        for each event :meth:`notify` sends the user. Returns the function that stops.

        After the connection that carries them was lost and came back, ``on_entry`` is also
        handed the inbox's newest entry with ``prev_seq = seq``, for every watcher (spread
        over a short time): a missed tail, which no later entry would reveal, is then read
        back (the watcher's feed sees a gap unless it has that entry already). So a missed
        entry always becomes known, at the latest shortly after a reconnect."""
        ...

    async def notify(self, users: Sequence[str], event: bytes) -> None:
        """Send an ephemeral event (a server frame, JSON) to every connected device of each
        user, on any process. At most once, never stored: nobody listening, nobody gets it."""
        ...


class SendLedger(Protocol):
    """Idempotency of sends: (sender, client message id) -> the original result.

    Records live for a configured time (at least 24 h), shared by every process."""

    async def claim(self, sender: str, client_id: str, record: SendRecord) -> SendRecord | None:
        """Atomically store ``record`` if no record exists for the key, returning None; else
        store nothing and return the existing record."""
        ...

    async def complete(self, sender: str, client_id: str, record: SendRecord) -> None:
        """Overwrite the record with ``record`` (which has ``done=True``)."""
        ...


class CursorStore(Protocol):
    """Each device's acknowledged inbox position, so a device that lost its cursor resumes.

    Last write wins; a position never needs to move backwards."""

    async def get(self, user: str, device: str) -> int | None: ...

    async def put(self, user: str, device: str, seq: int) -> None: ...


class RevocationBus(Protocol):
    """Tells every process that a device was logged out or revoked, so its open connections
    close at once (new requests are refused anyway: tokens are checked against the store)."""

    async def publish(self, device_id: str) -> None:
        """At most once: a lost notice leaves a connection open until it reconnects."""
        ...

    async def subscribe(self, on_revoked: Callable[[str], None]) -> None:
        """Call ``on_revoked(device_id)`` for every notice from any process, this one included."""
        ...


class Transport(Protocol):
    """How frames reach one client, as the core's :class:`core.session.DeviceSession` sees it
    (after centrifuge's ``Transport``): a WebSocket for its whole life (frontends/ws), or one
    long poll, whose frames become the poll's answer (frontends/longpoll). Every rule of
    delivery is the session's; a transport only carries frames.

    Reading is the frontend's business: it feeds received frames into the session (a
    WebSocket) or calls the shared request handlers (:mod:`core.requests`, over HTTP)."""

    @property
    def kind(self) -> str:
        """Which transport: ``ws`` or ``longpoll`` (metrics, logs)."""
        ...

    async def send(self, frame: str) -> None:
        """Send one text frame, in order after the ones before; may wait while the peer is slow
        to read (the session closes it as a slow consumer after ``send_timeout_s``). At most
        once: a frame sent to a peer that is gone is lost, and the client resumes from its
        cursor. The session calls it from one task at a time."""
        ...

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close the connection with a WebSocket close code (4000-4999 are ours). May wait
        while the peer does not read (the close frame queues behind unread frames). A poll
        has nothing to close: it ends with its answer."""
        ...

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake: the peer stopped reading."""
        ...


class Rate(msgspec.Struct, frozen=True, gc=False):
    """A rate limit in GCRA's terms: ``burst`` events at once, then one per ``interval_ms``
    (so ``burst`` per ``burst * interval_ms`` on average)."""

    burst: int
    interval_ms: int


class Grant(NamedTuple):
    """What a :meth:`RateLimiter.hit` allowed: the first ``granted`` of the events asked for;
    for the rest, ``retry_after_ms`` until the next one would be allowed (0 when all were)."""

    granted: int
    retry_after_ms: int


class RateLimiter(Protocol):
    """Rate limits and counters shared by every process that uses the same backend: Redis in
    production (storage/redis_limits.py), or this process alone (core/ratelimit.py, the
    embedded default, which is one process, so it is exact there). Both pass one contract
    suite (tests/integration/test_rate_limit_contract.py).

    Every method is atomic on its own (one Lua script on Redis, one round trip): two processes
    hitting the same key at once never both take the last event. Keys live only as long as
    they mean something (a TTL on Redis), so idle keys cost nothing.

    When the backend does not answer (Redis down or slow), a method raises
    ``ChatError(UNAVAILABLE)`` and changes nothing it can vouch for; the caller decides,
    per limit, whether that refuses the request (log-in, sign-up) or lets it pass
    (core/limits.py)."""

    async def hit(self, rates: Sequence[tuple[str, Rate]], cost: int = 1) -> Grant:
        """Take up to ``cost`` events from every key at once (GCRA): as many as all keys can
        grant, charged to each; none if one key has none left."""
        ...

    async def fail(self, keys: Sequence[str], rate: Rate, lock_ms: int, max_lock_ms: int) -> int:
        """Count a failure (a wrong password) against each key at ``rate``. A key whose
        failures used the rate's whole burst is locked for ``lock_ms``, doubling at each lock
        up to ``max_lock_ms`` while failures keep coming before the budget refills. Returns the
        longest lock now in force on the keys (ms; 0: none)."""
        ...

    async def locked(self, keys: Sequence[str]) -> int:
        """The longest lock in force on the keys (ms; 0: none)."""
        ...

    async def reset(self, key: str) -> None:
        """Forget the key's failures and lock (a successful log-in)."""
        ...

    async def acquire(self, key: str, member: str, limit: int, lease_ms: int) -> bool:
        """Count ``member`` (a connection) under ``key`` if fewer than ``limit`` are counted,
        or renew it if it already is; it counts for ``lease_ms`` unless renewed or released
        (the safety net for a process that died without releasing). False: the limit is
        reached, nothing changed."""
        ...

    async def release(self, key: str, member: str) -> None:
        """Stop counting ``member`` under ``key``."""
        ...
