"""JetStream publishes with their acknowledgements, cheaply: the send path's hot loop.

nats-py's ``publish_async`` does the same job but costs more per message than the write
itself: a ``wait_for`` on a semaphore, a SystemRandom token, ``json.loads`` and a dataclass per
acknowledgement (a profile of 1:1 sending at 1,000 msg/s put JetStream publishing at a quarter
of the server's CPU, docs/benchmarks.md). Here one reply subscription serves every publish of
the process, a counter names each, and msgspec decodes the acknowledgement.

Every JetStream write of jetchat goes through here (inbox copies, send ledger, group
timelines), so JetStream's refusals and silences become core errors in one place: a refusal
is a :class:`PublishError` (a ChatError UNAVAILABLE that keeps JetStream's codes, so a caller
can take one of them, e.g. :data:`WRONG_LAST_SEQUENCE`, as an answer), and an acknowledgement
that does not come within the bound is ChatError UNAVAILABLE too (a lost acknowledgement would
leave its future pending forever: :meth:`Publisher.acked` bounds the wait).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from core.errors import ChatError, ErrorCode

# JetStream's error codes that jetchat answers (the only definitions)
WRONG_LAST_SEQUENCE = 10071
"""``Nats-Expected-Last-Subject-Sequence`` did not match: another writer came first."""


class PublishError(ChatError):
    """JetStream refused the message: UNAVAILABLE to clients; ``code`` (as in HTTP) and
    ``err_code`` (e.g. :data:`WRONG_LAST_SEQUENCE`) are JetStream's."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(
            ErrorCode.UNAVAILABLE,
            f"JetStream refused the write: {description} (code {code}, err_code {err_code})",
        )
        self.status = code
        self.err_code = err_code


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class Ack(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_decode_ack = msgspec.json.Decoder(Ack).decode


class Publisher:
    def __init__(self, nc: NATS, ack_timeout_s: float = 5.0) -> None:
        """``ack_timeout_s``: the longest wait for JetStream to acknowledge a write (or a
        batch of writes, :meth:`acked`) before it fails as UNAVAILABLE (retryable)."""
        self._nc = nc
        self._ack_timeout_s = ack_timeout_s
        self._prefix = ""
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Ack]] = {}

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Ack]:
        """Write one message; the future resolves with its acknowledgement, or fails with
        :class:`PublishError`, or never if the acknowledgement is lost: wait with
        :meth:`acked`. Messages published in order on this connection are stored in that
        order."""
        token = str(next(self._ids))
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        await self._nc.publish(subject, data, reply=f"{self._prefix}.{token}", headers=headers)
        return future

    async def acked(self, futures: Sequence[asyncio.Future[Ack]]) -> list[Ack]:
        """Wait for the acknowledgements of :meth:`publish` calls, within the publisher's
        bound: ChatError UNAVAILABLE if they do not all come in time (those still pending are
        given up; any subset of the messages may be stored), :class:`PublishError` if
        JetStream refused one."""
        try:
            async with asyncio.timeout(self._ack_timeout_s):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            for f in futures:
                f.cancel()
            raise ChatError(
                ErrorCode.UNAVAILABLE, "JetStream did not acknowledge the message in time; retry"
            ) from None

    async def write(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> Ack:
        """One message and its acknowledgement (see :meth:`acked` for the failures)."""
        return (await self.acked([await self.publish(subject, data, headers)]))[0]

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject.rpartition(".")[2])
        if future is None or future.done():
            return
        if not msg.data:  # a status message: 503 no responders (no stream for the subject)
            status = (msg.headers or {}).get("Status", "")
            future.set_exception(PublishError(int(status or 0), 0, "no stream answered"))
            return
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(PublishError(0, 0, f"unreadable acknowledgement: {exc}"))
            return
        if ack.error is not None:
            e = ack.error
            future.set_exception(PublishError(e.code, e.err_code, e.description))
        else:
            future.set_result(ack)
