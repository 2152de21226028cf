"""Sending 1:1 messages: validation, idempotency, and the write into both inboxes."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence

import msgspec

from core import metrics
from core.accounts import Accounts
from core.errors import ChatError, ErrorCode
from core.identifiers import (
    CLIENT_ID_RE,
    MAX_CLIENT_ID_CHARS,
    TEXT_RE,
    USER_ID_RE,
    group_id_of,
    is_group_conversation,
)
from core.ids import MessageIds
from core.limits import RateLimits
from core.model import ChatMessage, SendRecord, Sent, dm_conversation
from core.ports import GroupLog, GroupStore, InboxLog, SendLedger

log = logging.getLogger(__name__)

_PLACE_ATTEMPTS = 20  # writers of one group racing from several processes

_encoder = msgspec.json.Encoder()
_decode_message = msgspec.json.Decoder(ChatMessage).decode


class SendRequest(msgspec.Struct, frozen=True):
    client_id: str
    to: str
    text: str


class Messaging:
    """A message is written once per participant: into the recipient's inbox and into the
    sender's own (so the sender's other devices get it too). ``Sent`` is returned only after
    JetStream acknowledged both copies.

    Idempotency: (sender, client_id) is claimed in the send ledger before anything is written,
    with the message id and timestamp chosen for it; a resend reuses them, so a copy written
    twice (a retry after a crash) carries the same id and is removed by the stream's duplicate
    window or, after it, by the client's de-duplication by id. Once both copies are
    acknowledged the ledger records it (without holding up ``Sent``), and a resend returns the
    original result writing nothing.
    """

    def __init__(
        self,
        accounts: Accounts,
        inbox: InboxLog,
        ledger: SendLedger,
        ids: MessageIds,
        max_message_chars: int,
        groups: GroupStore,
        group_log: GroupLog,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self._accounts = accounts
        self._limits = rate_limits  # sends per user and device (None: not limited, tests)
        self._inbox = inbox
        self._groups = groups
        self._group_log = group_log
        # One in-process queue per group, so this process's senders do not race each other
        # on the timeline (processes still may: the timeline's expected sequence settles it).
        self._group_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._ledger = ledger
        self._ids = ids
        self._max_chars = max_message_chars
        self._completing: set[asyncio.Future[None]] = set()  # ledger marks in flight
        # Users are never deleted, so a recipient once found stays valid: cache the hits.
        self._known_users: set[str] = set()

    def _complete_later(self, sender: str, records: list[tuple[str, SendRecord]]) -> None:
        async def complete() -> None:
            outcomes = await asyncio.gather(
                *(self._ledger.complete(sender, cid, rec) for cid, rec in records),
                return_exceptions=True,
            )
            failed = sum(isinstance(o, BaseException) for o in outcomes)
            if failed:
                log.warning("send ledger marks not written", extra={"count": failed})

        # a task per batch of sends, not supervised: it ends with the marks, and handles its
        # own failures (a resend finds an incomplete claim and finishes it)
        task = asyncio.ensure_future(complete())
        self._completing.add(task)
        task.add_done_callback(self._completing.discard)

    async def send(self, sender: str, device: str, request: SendRequest) -> Sent:
        result = (await self.send_many(sender, device, [request]))[0]
        if isinstance(result, ChatError):
            raise result
        return result

    async def send_many(
        self, sender: str, device: str, requests: Sequence[SendRequest]
    ) -> list[Sent | ChatError]:
        """Send several messages from one device, written in the order given. Ids increase in
        that order too, 1:1 and group sends alike (a resend keeps its first id). Each gets its
        own result; one failing does not fail the others."""
        with metrics.SEND_SECONDS.time():
            results = await self._send_many(sender, device, requests)
        for r in results:
            if isinstance(r, ChatError):
                metrics.SEND_ERRORS.labels(r.code.value).inc()
            else:
                metrics.MESSAGES_SENT.inc()
        return results

    async def _send_many(
        self, sender: str, device: str, requests: Sequence[SendRequest]
    ) -> list[Sent | ChatError]:
        results: list[Sent | ChatError | None] = [None] * len(requests)
        todo: list[tuple[int, SendRequest]] = []
        allowed = len(requests)
        if self._limits is not None:
            # the first sends within the rate go, in order; the rest are refused
            grant = await self._limits.sends(sender, device, len(requests))
            allowed = grant.granted
            for i in range(allowed, len(requests)):
                results[i] = self._limits.refused_send(grant.retry_after_ms)
        for i, req in enumerate(requests[:allowed]):
            try:
                self._validate(req)
            except ChatError as err:
                results[i] = err
                continue
            todo.append((i, req))

        await self._check_recipients(todo, results)
        todo = [t for t in todo if results[t[0]] is None]

        # One connection's ids increase in send order, whatever the kind of each send. A group
        # send draws its id when it takes its place in the timeline (after the timeline's
        # newest), so the 1:1 sends around it must draw theirs in turn, not all at the start
        # of the batch: drawn up front, a 1:1 send pipelined after a group send got the
        # smaller id (5 pairs in 10). So the batch goes in runs, in order: each run of 1:1
        # sends is written together (one round of acknowledgements, as before), each group
        # send alone; ids are drawn as each run starts, from the process's one increasing
        # generator (which a group's place moves past the timeline's newest id).
        run: list[tuple[int, SendRequest]] = []
        for i, req in todo:
            if not is_group(req.to):
                run.append((i, req))
                continue
            if run:
                await self._send_direct(sender, device, run, results)
                run = []
            results[i] = await self._send_one_group(sender, device, req)
        if run:
            await self._send_direct(sender, device, run, results)
        return [r if r is not None else ChatError(ErrorCode.INTERNAL, "lost") for r in results]

    async def _send_direct(
        self,
        sender: str,
        device: str,
        run: list[tuple[int, SendRequest]],
        results: list[Sent | ChatError | None],
    ) -> None:
        """Send a run of 1:1 messages: ids drawn now, in order; claimed, then written into
        both inboxes in order with one wait for all acknowledgements."""
        todo = [(i, req, SendRecord(*self._ids.next())) for i, req in run]
        claims = await asyncio.gather(
            *(self._ledger.claim(sender, req.client_id, rec) for _, req, rec in todo),
            return_exceptions=True,
        )
        writes: list[tuple[int, SendRequest, SendRecord]] = []
        for (i, req, rec), claim in zip(todo, claims, strict=True):
            if isinstance(claim, BaseException):
                results[i] = _as_chat_error(claim)
            elif claim is not None and claim.done:
                results[i] = Sent(req.client_id, claim.id, _conversation(sender, req.to), claim.ts)
            else:
                writes.append((i, req, claim or rec))

        copies: list[tuple[str, str, bytes]] = []
        for _, req, rec in writes:
            data = _encoder.encode(self._message(sender, device, req, rec))
            copies.append((req.to, f"{rec.id}.{req.to}", data))
            if req.to != sender:
                copies.append((sender, f"{rec.id}.{sender}", data))
        if copies:
            try:
                await self._inbox.append(copies)
            except Exception as exc:
                failure = _as_chat_error(exc)
                for i, _, _ in writes:
                    results[i] = failure
                return

        if writes:
            # The "done" marks are not waited for: until one lands, a resend finds the claim
            # and rewrites the copies with the same id, which the stream's duplicate window
            # drops (the client would de-duplicate them by id after it). So "sent" goes out
            # one round trip sooner, and a crash before the mark lands loses nothing.
            self._complete_later(
                sender,
                [(req.client_id, SendRecord(rec.id, rec.ts, True)) for _, req, rec in writes],
            )
        for i, req, rec in writes:
            results[i] = Sent(req.client_id, rec.id, _conversation(sender, req.to), rec.ts)

    async def _send_one_group(self, sender: str, device: str, req: SendRequest) -> Sent | ChatError:
        """Claim a group send (with a provisional id: the timeline gives the real one), then
        send it, unless it is a resend of one already done."""
        rec = SendRecord(*self._ids.next())
        try:
            claim = await self._ledger.claim(sender, req.client_id, rec)
        except Exception as exc:
            return _as_chat_error(exc)
        if claim is not None and claim.done:
            return Sent(req.client_id, claim.id, req.to, claim.ts)
        return await self._send_group(sender, device, req, claim or rec)

    async def _send_group(
        self, sender: str, device: str, req: SendRequest, record: SendRecord
    ) -> Sent | ChatError:
        """Take the message's place in the group's timeline, then copy it to every member's
        inbox, all under the group's shared lock (core.ports.GroupStore)."""
        conv, group_id = req.to, group_id_of(req.to)
        try:
            async with self._group_locks.setdefault(group_id, asyncio.Lock()):
                async with self._groups.sending(group_id) as members:
                    if members is None:
                        return ChatError(ErrorCode.NOT_FOUND, f"no group {conv!r}")
                    if sender not in {m.user_id for m in members}:
                        return ChatError(ErrorCode.FORBIDDEN, "you are not a member of this group")
                    if record.logged:  # a resend of a message already in the timeline
                        data = _encoder.encode(self._message(sender, device, req, record))
                    else:
                        placed, data = await self.place(
                            group_id,
                            f"{sender}.{req.client_id}",
                            lambda msg_id, ts: self._message(
                                sender, device, req, SendRecord(msg_id, ts)
                            ),
                        )
                        record = SendRecord(placed.id, placed.ts, logged=True)
                        await self._ledger.complete(sender, req.client_id, record)
                    await self.deliver(record.id, data, [m.user_id for m in members])
            await self._ledger.complete(
                sender, req.client_id, SendRecord(record.id, record.ts, True, True)
            )
        except Exception as exc:
            return _as_chat_error(exc)
        return Sent(req.client_id, record.id, conv, record.ts)

    async def place(
        self, group_id: str, dedupe_key: str, build: Callable[[str, int], ChatMessage]
    ) -> tuple[ChatMessage, bytes]:
        """Write a timeline entry built for the id it gets: an id greater than the timeline's
        newest, written only if no one wrote in between (else read again and retry), so ids
        follow the group's sequence whichever process writes. Returns the entry as stored (the
        first write's, for a resend within the duplicate window) and its bytes."""
        for _ in range(_PLACE_ATTEMPTS):
            seq, last_id = await self._group_log.last(group_id)
            msg_id, ts = self._ids.after(last_id) if last_id else self._ids.next()
            placed = await self._group_log.append(
                group_id, _encoder.encode(build(msg_id, ts)), seq, dedupe_key
            )
            if placed is not None:
                return _decode_message(placed[1]), placed[1]
        raise ChatError(ErrorCode.UNAVAILABLE, "the group is too busy right now; retry")

    async def deliver(self, message_id: str, data: bytes, users: Sequence[str]) -> None:
        """Copy a timeline entry into each user's inbox (idempotent per user)."""
        await self._inbox.append([(u, f"{message_id}.{u}", data) for u in users])

    @staticmethod
    def _message(sender: str, device: str, req: SendRequest, record: SendRecord) -> ChatMessage:
        return ChatMessage(
            id=record.id,
            conv=_conversation(sender, req.to),
            sender=sender,
            sender_device=device,
            to=req.to,
            text=req.text,
            ts=record.ts,
            client_id=req.client_id,
        )

    def _validate(self, req: SendRequest) -> None:
        if not 1 <= len(req.client_id) <= MAX_CLIENT_ID_CHARS or not CLIENT_ID_RE.fullmatch(
            req.client_id
        ):
            raise ChatError(
                ErrorCode.INVALID_ARGUMENT,
                f"client_id must be 1 to {MAX_CLIENT_ID_CHARS} characters, none a control one",
            )
        if not req.text:
            raise ChatError(ErrorCode.EMPTY_MESSAGE, "text is empty")
        if not (USER_ID_RE.fullmatch(req.to) or is_group(req.to)):
            raise ChatError(
                ErrorCode.UNKNOWN_RECIPIENT, f"{req.to!r} is neither a user nor a group"
            )
        if len(req.text) > self._max_chars:
            raise ChatError(
                ErrorCode.MESSAGE_TOO_LONG,
                f"text has {len(req.text)} characters; the limit is {self._max_chars}",
            )
        if not TEXT_RE.fullmatch(req.text):
            raise ChatError(
                ErrorCode.INVALID_ARGUMENT,
                "text: no NUL or control characters but tab, newline and carriage return",
            )

    async def _check_recipients(
        self,
        todo: list[tuple[int, SendRequest]],
        results: list[Sent | ChatError | None],
    ) -> None:
        unknown = {req.to for _, req in todo if not is_group(req.to)} - self._known_users
        for user in unknown:
            try:
                found = await self._accounts.exists(user)
            except Exception as exc:
                found, failure = False, _as_chat_error(exc)
            else:
                failure = ChatError(ErrorCode.UNKNOWN_RECIPIENT, f"no user {user!r}")
            if found:
                self._known_users.add(user)
                continue
            for i, req in todo:
                if req.to == user:
                    results[i] = failure


def is_group(to: str) -> bool:
    return is_group_conversation(to)


def _conversation(sender: str, to: str) -> str:
    return to if is_group(to) else dm_conversation(sender, to)


def _as_chat_error(exc: BaseException) -> ChatError:
    if isinstance(exc, ChatError):
        return exc
    return ChatError(
        ErrorCode.UNAVAILABLE, f"the message store did not answer; retry ({type(exc).__name__})"
    )
