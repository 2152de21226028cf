"""Sending 1:1 messages: validation, idempotency, and the write into both inboxes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from core import metrics
from core.accounts import Accounts
from core.errors import ChatError, ErrorCode
from core.ids import MessageIds
from core.model import ChatMessage, SendRecord, Sent, dm_conversation
from core.ports import InboxLog, SendLedger

MAX_CLIENT_ID_CHARS = 64

_encoder = msgspec.json.Encoder()


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
    acknowledged the ledger records it, and a resend returns the original result writing
    nothing.
    """

    def __init__(
        self,
        accounts: Accounts,
        inbox: InboxLog,
        ledger: SendLedger,
        ids: MessageIds,
        max_message_chars: int,
    ) -> None:
        self._accounts = accounts
        self._inbox = inbox
        self._ledger = ledger
        self._ids = ids
        self._max_chars = max_message_chars
        # Users are never deleted, so a recipient once found stays valid: cache the hits.
        self._known_users: set[str] = set()

    async def send(self, sender: str, device: str, request: SendRequest) -> Sent:
        result = (await self.send_many(sender, device, [request]))[0]
        if isinstance(result, ChatError):
            raise result
        return result

    async def send_many(
        self, sender: str, device: str, requests: Sequence[SendRequest]
    ) -> list[Sent | ChatError]:
        """Send several messages from one device, written in the order given (ids increase in
        that order too). Each gets its own result; one failing does not fail the others."""
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
        todo: list[tuple[int, SendRequest, SendRecord]] = []
        for i, req in enumerate(requests):
            try:
                self._validate(req)
            except ChatError as err:
                results[i] = err
                continue
            msg_id, ts = self._ids.next()
            todo.append((i, req, SendRecord(msg_id, ts)))

        await self._check_recipients(todo, results)
        todo = [t for t in todo if results[t[0]] is None]

        claims = await asyncio.gather(
            *(self._ledger.claim(sender, req.client_id, rec) for _, req, rec in todo),
            return_exceptions=True,
        )
        writes: list[tuple[int, SendRequest, SendRecord]] = []
        for (i, req, rec), claim in zip(todo, claims, strict=True):
            if isinstance(claim, BaseException):
                results[i] = _as_chat_error(claim)
            elif claim is not None and claim.done:
                results[i] = Sent(
                    req.client_id, claim.id, dm_conversation(sender, req.to), claim.ts
                )
            else:
                writes.append((i, req, claim or rec))

        copies: list[tuple[str, str, bytes]] = []
        for _, req, rec in writes:
            msg = ChatMessage(
                id=rec.id,
                conv=dm_conversation(sender, req.to),
                sender=sender,
                sender_device=device,
                to=req.to,
                text=req.text,
                ts=rec.ts,
                client_id=req.client_id,
            )
            data = _encoder.encode(msg)
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
                writes = []

        done = await asyncio.gather(
            *(
                self._ledger.complete(sender, req.client_id, SendRecord(rec.id, rec.ts, True))
                for _, req, rec in writes
            ),
            return_exceptions=True,
        )
        for (i, req, rec), outcome in zip(writes, done, strict=True):
            # The copies are durable even if the ledger update failed; a resend then rewrites
            # them with the same id, which the client de-duplicates.
            del outcome
            results[i] = Sent(req.client_id, rec.id, dm_conversation(sender, req.to), rec.ts)
        return [r if r is not None else ChatError(ErrorCode.INTERNAL, "lost") for r in results]

    def _validate(self, req: SendRequest) -> None:
        if not 1 <= len(req.client_id) <= MAX_CLIENT_ID_CHARS:
            raise ChatError(
                ErrorCode.INVALID_ARGUMENT,
                f"client_id must be 1 to {MAX_CLIENT_ID_CHARS} characters",
            )
        if not req.text:
            raise ChatError(ErrorCode.EMPTY_MESSAGE, "text is empty")
        if len(req.text) > self._max_chars:
            raise ChatError(
                ErrorCode.MESSAGE_TOO_LONG,
                f"text has {len(req.text)} characters; the limit is {self._max_chars}",
            )

    async def _check_recipients(
        self,
        todo: list[tuple[int, SendRequest, SendRecord]],
        results: list[Sent | ChatError | None],
    ) -> None:
        unknown = {req.to for _, req, _ in todo} - self._known_users
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
            for i, req, _ in todo:
                if req.to == user:
                    results[i] = failure


def _as_chat_error(exc: BaseException) -> ChatError:
    if isinstance(exc, ChatError):
        return exc
    return ChatError(
        ErrorCode.UNAVAILABLE, f"the message store did not answer; retry ({type(exc).__name__})"
    )
