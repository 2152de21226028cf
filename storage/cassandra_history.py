"""History in Cassandra (implements core.ports.HistoryStore): production's store, kept forever.

Tables (created by :func:`migrate`; names match the Postgres store's where they can):

``messages``, primary key ``((conv, bucket), id)``, clustered by id ascending
    One partition per conversation and time bucket, ``bucket = id_time_ms(id) // bucket_ms``.
    Ids are fixed-width hex whose byte order is time order, so the clustering order is the
    conversation's order and every page is one slice of one or a few partitions. The bucket
    bounds a partition: see :data:`DEFAULT_BUCKET_MS`.
``conversation_buckets``, primary key ``(conv, bucket)``, bucket descending
    Which buckets of a conversation hold messages, so paging jumps over empty time (a
    conversation quiet for a year costs one index read, not 36 empty partition reads).
``conversations_by_user``, primary key ``(user_id, conv)``
    Each member's conversations with the newest message. Written ``USING TIMESTAMP`` the
    message's time in µs, so the newest message wins whatever order writes arrive in (two
    archivers, a replay, a late retry); on a tie (same ms) Cassandra keeps the larger value,
    i.e. the larger id, which is again the newer message. Read whole and sorted here: a user
    has a bounded number of conversations (thousands at most; :data:`core.history`'s page of
    them is 500), one partition of a few hundred KB at worst.

Writes. Every statement is prepared and marked idempotent (the driver may retry it). A
:meth:`CassandraHistoryStore.write` goes in three steps, each a set of concurrent requests:
bucket index rows, then message rows (unlogged batches of one partition each: one mutation per
partition, atomic and isolated there, cheap on the server), then the members' conversation
rows. The order keeps two invariants whatever fails half-way: a stored message is in an indexed
bucket (so a page finds what :meth:`get` finds), and a conversation row points to a stored
message. A failed write leaves some prefix of this done (a message stored but not yet in its
members' lists, say) until the caller replays the batch, as the protocol asks, which
overwrites what is there. We do not use logged (multi-partition) batches: they would finish
such a write without the replay, at the price of a batchlog write to two other replicas per
batch, and readers never see an inconsistent state either way. A store remembers the bucket
index rows it wrote, so a busy conversation's writes are two round trips, not three.

Consistency (``consistency``, default LOCAL_QUORUM for reads and writes). With replication
factor 3 in the local data centre (NetworkTopologyStrategy, production), a quorum is 2 of 3
replicas, and any read quorum overlaps any write quorum. So with one replica node down:
writes and reads still succeed; every acknowledged write is seen by later reads (it is on at
least one node of every read quorum); the node that was down catches up by hints and repair.
Two of a partition's three replicas down: its reads and writes fail (UNAVAILABLE), nothing
acknowledged is lost, and the archiver retries from JetStream (writes are idempotent). On one
node with replication factor 1 (tests, development) LOCAL_QUORUM is that one node.

Refusals. A write Cassandra refuses for its values (InvalidRequest: a partition key over
64 KiB, a batch over the server's size limit) or that the driver cannot encode raises
:class:`core.ports.Refused`; every other error (Unavailable, WriteTimeout, OperationTimedOut,
NoHostAvailable, Overloaded) may pass later and is raised as it is, for the archiver to retry.

Async: the driver's ``execute_async`` futures complete on its I/O thread; :func:`_run` hands
each result to the event loop with ``call_soon_threadsafe``, so no call blocks the loop.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    ResponseFuture,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, tuple_factory

from core.model import (
    HISTORY_COLUMNS,
    ChatMessage,
    ConversationSummary,
    conversation_members,
    id_time_ms,
    message_from_row,
    message_row,
)
from core.ports import Refused

__all__ = [
    "DEFAULT_BUCKET_MS",
    "DEFAULT_CONSISTENCY",
    "MIGRATIONS",
    "CassandraHistoryStore",
    "migrate",
    "network_replication",
    "open_cassandra_history",
    "simple_replication",
]

Row: TypeAlias = Sequence[Any]
Replication: TypeAlias = Mapping[str, str | int] | str

DEFAULT_BUCKET_MS = 10 * 24 * 3600 * 1000
"""Time span of one ``messages`` partition: 10 days, in ms.

Why: Cassandra wants partitions well under ~100 MB (compaction, repair and reads handle a
partition as a unit). A very busy human conversation, 5,000 messages a day of a few hundred
bytes each, fills about 15 MB in 10 days; a typical one a few KB. Shorter buckets would split
the latest page of a normal conversation over more partitions for no gain (empty buckets are
skipped anyway, through ``conversation_buckets``). Changing it for an existing keyspace would
orphan stored messages: it is fixed at deployment. Tests use tiny buckets (1 s) to cross many."""

DEFAULT_CONSISTENCY: int = ConsistencyLevel.LOCAL_QUORUM
"""Reads and writes; see the module docstring for what it survives."""

MAX_IN_FLIGHT = 64
"""Concurrent requests one ``write`` keeps open. Enough to keep a node's 2-32 request threads
busy over one connection, without piling up thousands of requests (the driver would time
them out) when a caller hands us a huge batch."""

MAX_BATCH_ROWS = 100
"""Rows per unlogged (single-partition) batch."""

MAX_BATCH_CHARS = 256 * 1024
"""Message text per batch, in characters (up to 4 bytes each in UTF-8). Keeps a batch far
below Cassandra's mutation size limit (half a commit-log segment: 16 MB by default) even
with the longest messages (100,000 characters)."""

INDEXED_BUCKETS_CACHED = 100_000
"""(conversation, bucket) pairs a store remembers having indexed (about 10 MB): the active
conversations of the last bucket span, so their writes skip the index round trip."""

BUCKET_SCAN = 64
"""Bucket index rows read at a time while paging."""

_DRIVER_BIND_ERROR = "Received an argument of invalid type"
"""How the driver's TypeError starts when it cannot encode a bound value (a number out of
range, say): a value refused, not a bug of ours, whose TypeErrors read otherwise."""


def refusal(exc: BaseException) -> str | None:
    """Why Cassandra will never take this write, or None if it may take it later."""
    if isinstance(exc, InvalidRequest) or (
        isinstance(exc, TypeError) and str(exc).startswith(_DRIVER_BIND_ERROR)
    ):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, UnicodeEncodeError):
        return f"UnicodeEncodeError: {exc.reason}"
    return None


_KEYSPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def simple_replication(factor: int = 1) -> dict[str, str | int]:
    """SimpleStrategy: for a single node (tests, development) or a single data centre lab."""
    return {"class": "SimpleStrategy", "replication_factor": factor}


def network_replication(**factors: int) -> dict[str, str | int]:
    """NetworkTopologyStrategy with a factor per data centre, e.g. ``dc1=3``: production."""
    return {"class": "NetworkTopologyStrategy", **factors}


def _replication_cql(replication: Replication) -> str:
    """A CQL map literal. A string is taken as one already (``"{'class': ...}"``)."""
    if isinstance(replication, str):
        text = replication.strip()
        if not (text.startswith("{") and text.endswith("}")) or ";" in text:
            raise ValueError(f"replication must be a CQL map literal: {replication!r}")
        return text

    def literal(value: str | int) -> str:
        return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"

    return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in replication.items()) + "}"


def _check_keyspace(keyspace: str) -> str:
    if not _KEYSPACE_RE.fullmatch(keyspace):
        raise ValueError(f"keyspace must match {_KEYSPACE_RE.pattern}: {keyspace!r}")
    return keyspace


def _cql(template: str, keyspace: str) -> str:
    """``template`` with ``{ks}`` replaced by the keyspace. A keyspace name cannot be a bound
    value, so it is spliced in; :func:`_check_keyspace` lets only plain identifiers through.
    Every value is bound (``?`` or ``%s``), never spliced."""
    return template.replace("{ks}", _check_keyspace(keyspace))


# ---------------------------------------------------------------------------- async bridge


def _run(
    session: Session, statement: Any, params: Sequence[Any] | None = None
) -> Awaitable[list[Row]]:
    """Execute on the driver's I/O thread; the returned future completes on the running loop
    with every row (following the driver's result pages)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Row]] = loop.create_future()
    rows: list[Row] = []
    response: ResponseFuture = session.execute_async(statement, params)

    def settle_ok() -> None:
        if not done.done():  # the awaiting task may have been cancelled
            done.set_result(rows)

    def settle_error(exc: BaseException) -> None:
        if not done.done():
            done.set_exception(exc)

    def on_page(page: Iterable[Row] | None) -> None:
        # Called on the driver's thread (or here, if the result is already in), once per page.
        if page is not None:
            rows.extend(page)
        if response.has_more_pages:
            response.start_fetching_next_page()
        else:
            loop.call_soon_threadsafe(settle_ok)

    def on_error(exc: BaseException) -> None:
        loop.call_soon_threadsafe(settle_error, exc)

    response.add_callbacks(on_page, on_error)
    return done


async def _run_all(session: Session, requests: Iterable[tuple[Any, Sequence[Any] | None]]) -> None:
    """Run requests concurrently, at most :data:`MAX_IN_FLIGHT` at a time; raise the first
    error after every started request has finished (none is left running behind our back)."""
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(statement: Any, params: Sequence[Any] | None) -> None:
        async with limit:
            await _run(session, statement, params)

    results = await asyncio.gather(
        *(one(statement, params) for statement, params in requests), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


# ------------------------------------------------------------------------------ migrations

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "history: messages, conversation_buckets, conversations_by_user",
        (
            """CREATE TABLE IF NOT EXISTS {ks}.messages (
                conv          text,
                bucket        bigint,   -- id_time_ms(id) // bucket_ms
                id            text,     -- 24 hex digits, time-sortable
                sender        text,
                sender_device text,
                recipient     text,     -- ChatMessage.to (TO is a CQL keyword)
                body          text,     -- ChatMessage.text
                ts            bigint,   -- ms since the epoch, as carried by the id
                client_id     text,
                PRIMARY KEY ((conv, bucket), id)
            ) WITH CLUSTERING ORDER BY (id ASC)""",
            """CREATE TABLE IF NOT EXISTS {ks}.conversation_buckets (
                conv   text,
                bucket bigint,
                PRIMARY KEY (conv, bucket)
            ) WITH CLUSTERING ORDER BY (bucket DESC)""",
            """CREATE TABLE IF NOT EXISTS {ks}.conversations_by_user (
                user_id text,
                conv    text,
                last_id text,
                last_ts bigint,
                PRIMARY KEY (user_id, conv)
            )""",
        ),
    ),
    (
        2,
        "history: group timeline events",
        (
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS event text",
            "ALTER TABLE {ks}.messages ADD IF NOT EXISTS target text",
        ),
    ),
)
"""(version, name, CQL statements with ``{ks}`` for the keyspace). Append only; every statement
is idempotent (IF NOT EXISTS), so a migration cut short is simply run again."""


async def migrate(session: Session, keyspace: str, replication: Replication) -> list[int]:
    """Create the keyspace (if missing, with ``replication``) and apply the migrations not yet
    recorded in its ``schema_migrations`` table. Returns the versions applied now.

    An existing keyspace keeps its replication: changing it is an operator's ALTER KEYSPACE
    followed by a repair. Run migrations from one process at a time: Cassandra 5.0 schema
    changes are not transactional, and two processes creating the same table at once can
    leave the nodes disagreeing on it."""
    ks = _check_keyspace(keyspace)
    create = "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = " + _replication_cql(
        replication
    )
    await _run(session, _cql(create, ks))
    await _run(
        session,
        _cql(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations"
            " (version int PRIMARY KEY, name text, applied_at timestamp)",
            ks,
        ),
    )
    rows = await _run(session, _cql("SELECT version FROM {ks}.schema_migrations", ks))
    applied = {int(row[0]) for row in rows}
    done: list[int] = []
    for version, name, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements:
            await _run(session, _cql(statement, ks))
        await _run(
            session,
            _cql(
                "INSERT INTO {ks}.schema_migrations (version, name, applied_at)"
                " VALUES (%s, %s, toTimestamp(now()))",
                ks,
            ),
            (version, name),
        )
        done.append(version)
    return done


# ----------------------------------------------------------------------------------- store

_SELECT_MESSAGES = (  # the columns in the order message_from_row() reads them
    "SELECT " + HISTORY_COLUMNS + " FROM {ks}.messages WHERE conv = ? AND bucket = ?"  # noqa: S608
)
_INSERT_MESSAGE = (
    "INSERT INTO {ks}.messages (bucket, "  # noqa: S608 - a constant column list
    + HISTORY_COLUMNS
    + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_BUCKET = "INSERT INTO {ks}.conversation_buckets (conv, bucket) VALUES (?, ?)"
_SELECT_BUCKETS = "SELECT bucket FROM {ks}.conversation_buckets WHERE conv = ?"
_UPSERT_SUMMARY = (
    "INSERT INTO {ks}.conversations_by_user (user_id, conv, last_id, last_ts)"
    " VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
)
_SELECT_SUMMARIES = (
    "SELECT conv, last_id, last_ts FROM {ks}.conversations_by_user WHERE user_id = ?"
)


class CassandraHistoryStore:
    """:class:`core.ports.HistoryStore` on Cassandra (see the module docstring).

    ``session``: connected, with a tuple or named-tuple row factory (the driver's default);
    rows are read by position. ``bucket_ms`` must be the same for every process of a
    deployment, forever (:data:`DEFAULT_BUCKET_MS`). The store closes the session's cluster
    on :meth:`close` only if it was made by :func:`open_cassandra_history`.

    The constructor prepares its statements, a blocking round trip each (milliseconds on a
    healthy cluster): build the store at start-up or with ``asyncio.to_thread``, as
    :func:`open_cassandra_history` does."""

    def __init__(
        self,
        session: Session,
        keyspace: str,
        *,
        bucket_ms: int = DEFAULT_BUCKET_MS,
        consistency: int = DEFAULT_CONSISTENCY,
        owns_cluster: bool = False,
    ) -> None:
        if bucket_ms < 1:
            raise ValueError(f"bucket_ms must be positive: {bucket_ms}")
        ks = _check_keyspace(keyspace)
        self.keyspace = ks
        self.bucket_ms = bucket_ms
        self._session = session
        self._consistency = consistency
        self._owns_cluster = owns_cluster
        # (conv, bucket) pairs whose index row this store wrote, oldest first.
        self._indexed: dict[tuple[str, int], None] = {}

        def prepare(template: str) -> PreparedStatement:
            statement: PreparedStatement = session.prepare(_cql(template, ks))
            statement.consistency_level = consistency
            statement.is_idempotent = True
            return statement

        self._insert_message = prepare(_INSERT_MESSAGE)
        self._insert_bucket = prepare(_INSERT_BUCKET)
        self._upsert_summary = prepare(_UPSERT_SUMMARY)
        self._get = prepare(_SELECT_MESSAGES + " AND id = ?")
        self._newest = prepare(_SELECT_MESSAGES + " ORDER BY id DESC LIMIT ?")
        self._before = prepare(_SELECT_MESSAGES + " AND id < ? ORDER BY id DESC LIMIT ?")
        self._after = prepare(_SELECT_MESSAGES + " AND id > ? ORDER BY id ASC LIMIT ?")
        self._buckets_down = prepare(
            _SELECT_BUCKETS + " AND bucket <= ? ORDER BY bucket DESC LIMIT ?"
        )
        self._buckets_up = prepare(_SELECT_BUCKETS + " AND bucket >= ? ORDER BY bucket ASC LIMIT ?")
        self._summaries = prepare(_SELECT_SUMMARIES)

    def bucket_of(self, message_id: str) -> int:
        return id_time_ms(message_id) // self.bucket_ms

    # -- writes ---------------------------------------------------------------------------

    async def write(self, messages: Sequence[ChatMessage]) -> None:
        if not messages:
            return
        try:
            await self._write(messages)
        except (InvalidRequest, TypeError, UnicodeEncodeError) as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            raise Refused(messages[0].id if len(messages) == 1 else "", reason) from exc

    async def _write(self, messages: Sequence[ChatMessage]) -> None:
        partitions: dict[tuple[str, int], dict[str, ChatMessage]] = defaultdict(dict)
        latest: dict[tuple[str, str], ChatMessage] = {}
        for m in messages:
            partitions[(m.conv, self.bucket_of(m.id))][m.id] = m  # a repeat in the batch: once
            for user in conversation_members(m.conv):
                key = (user, m.conv)
                if key not in latest or latest[key].id < m.id:
                    latest[key] = m
        # 1. The bucket index first: a message row must never sit in an unindexed bucket.
        # Index rows are never deleted, so one this process wrote need not be written again:
        # a conversation's ongoing writes skip this round trip.
        unindexed = [pair for pair in partitions if pair not in self._indexed]
        if unindexed:
            await _run_all(self._session, ((self._insert_bucket, pair) for pair in unindexed))
            for pair in unindexed:
                self._indexed[pair] = None
            while len(self._indexed) > INDEXED_BUCKETS_CACHED:
                del self._indexed[next(iter(self._indexed))]  # the oldest entries
        # 2. The messages, one unlogged batch per partition (split by size).
        await _run_all(
            self._session,
            (
                (batch, None)
                for key, rows in partitions.items()
                for batch in self._batches(key, rows)
            ),
        )
        # 3. Conversation lists last, so they only ever point to stored messages. The write
        # time is the message's: an older message written later does not win.
        await _run_all(
            self._session,
            (
                (self._upsert_summary, (user, conv, m.id, m.ts, id_time_ms(m.id) * 1000))
                for (user, conv), m in latest.items()
            ),
        )

    def _batches(
        self, key: tuple[str, int], rows: Mapping[str, ChatMessage]
    ) -> Iterable[BatchStatement]:
        _, bucket = key
        batch = self._new_batch()
        rows_in, chars_in = 0, 0
        for m in sorted(rows.values(), key=lambda m: m.id):
            if rows_in and (rows_in >= MAX_BATCH_ROWS or chars_in + len(m.text) > MAX_BATCH_CHARS):
                yield batch
                batch, rows_in, chars_in = self._new_batch(), 0, 0
            batch.add(
                self._insert_message,
                (bucket, *message_row(m)),
            )
            rows_in += 1
            chars_in += len(m.text)
        yield batch

    def _new_batch(self) -> BatchStatement:
        batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self._consistency)
        batch.is_idempotent = True
        return batch

    # -- reads ----------------------------------------------------------------------------

    async def page(
        self,
        conv: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int,
    ) -> list[ChatMessage]:
        """Walk the conversation's non-empty buckets, newest first (or oldest first with
        ``after``), reading each with the id bound and the rows still wanted, until ``limit``
        rows are in. With 10-day buckets a page almost always reads one or two partitions."""
        if limit < 1:
            return []
        found: list[ChatMessage] = []
        if after is not None:
            async for bucket in self._buckets(conv, self.bucket_of(after), upwards=True):
                rows = await _run(
                    self._session, self._after, (conv, bucket, after, limit - len(found))
                )
                found += map(message_from_row, rows)
                if len(found) >= limit:
                    break
            return found
        start = self.bucket_of(before) if before is not None else 2**63 - 1
        async for bucket in self._buckets(conv, start, upwards=False):
            want = limit - len(found)
            if before is None:
                rows = await _run(self._session, self._newest, (conv, bucket, want))
            else:
                rows = await _run(self._session, self._before, (conv, bucket, before, want))
            found += map(message_from_row, rows)
            if len(found) >= limit:
                break
        found.reverse()
        return found

    async def _buckets(self, conv: str, start: int, *, upwards: bool) -> AsyncIterator[int]:
        """The conversation's non-empty buckets from ``start`` (inclusive) on, read from the
        index :data:`BUCKET_SCAN` at a time (an async iterator)."""
        statement = self._buckets_up if upwards else self._buckets_down
        while True:
            rows = await _run(self._session, statement, (conv, start, BUCKET_SCAN))
            for row in rows:
                yield int(row[0])
            if len(rows) < BUCKET_SCAN:
                return
            start = int(rows[-1][0]) + (1 if upwards else -1)

    async def get(self, conv: str, message_id: str) -> ChatMessage | None:
        rows = await _run(self._session, self._get, (conv, self.bucket_of(message_id), message_id))
        return message_from_row(rows[0]) if rows else None

    async def conversations(self, user: str, limit: int) -> list[ConversationSummary]:
        rows = await _run(self._session, self._summaries, (user,))
        summaries = [ConversationSummary(str(c), str(i), int(t)) for c, i, t in rows]
        summaries.sort(key=lambda s: s.last_id, reverse=True)
        return summaries[: max(limit, 0)]

    async def ping(self) -> None:
        """Raise if no replica answers (readiness)."""
        await _run(self._session, "SELECT release_version FROM system.local")

    async def close(self) -> None:
        """Shut the cluster connection down if this store opened it (else leave it alone)."""
        if self._owns_cluster:
            cluster: Cluster = self._session.cluster
            await asyncio.to_thread(cluster.shutdown)


async def open_cassandra_history(
    contact_points: list[str],
    port: int,
    keyspace: str,
    replication: Replication,
    bucket_ms: int = DEFAULT_BUCKET_MS,
    *,
    consistency: int = DEFAULT_CONSISTENCY,
    local_dc: str | None = None,
    request_timeout: float = 10.0,
) -> CassandraHistoryStore:
    """Connect, migrate ``keyspace`` (creating it with ``replication`` if missing) and return
    a store owning the connection (:meth:`CassandraHistoryStore.close` shuts it down).

    ``local_dc``: the data centre whose replicas serve us (LOCAL_QUORUM counts there); None
    lets the driver take the first contact point's. Requests are token-aware (sent to a
    replica of their partition)."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
        consistency_level=consistency,
        request_timeout=request_timeout,
        row_factory=tuple_factory,
    )
    cluster = Cluster(contact_points, port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        # connect() blocks (control connection, topology and schema reads): off the loop.
        session: Session = await asyncio.to_thread(cluster.connect)
        await migrate(session, keyspace, replication)
        store = await asyncio.to_thread(
            CassandraHistoryStore,
            session,
            keyspace,
            bucket_ms=bucket_ms,
            consistency=consistency,
            owns_cluster=True,
        )
    except BaseException:
        await asyncio.to_thread(cluster.shutdown)
        raise
    return store
