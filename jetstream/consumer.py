"""The one runner of durable JetStream pull consumers (the archiver today, the push worker next).

A consumer is a durable on a stream, a function turning a NATS message into the core's item
and a core handler (``core.ports.BatchHandler``). :meth:`PullConsumer.run` creates or updates
the durable, then fetches batches and hands them to the handler; the batch is acknowledged
after the handler returned, and nak'ed (delivered again at once, maybe to another process)
when it raised. So the handler's work happens before the acknowledgement, at least once.

What the runner does not do is retry: a fetch that times out is the normal "nothing new", but
every other error (JetStream unavailable during a node failure, the NATS connection lost, the
durable deleted, the handler failing) ends :meth:`run` with that error, and the supervisor
(core/supervisor.py) restarts it with backoff, logs it and reports the worker down. A batch
whose handler failed is nak'ed first, so it does not wait out the ack wait; one that was being
handled when the runner was cancelled or lost its connection comes back after the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, ConnectionReconnectingError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import BadRequestError

from core.ports import BatchHandler
from core.supervisor import GiveUp

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class PullConsumer(Generic[Item]):
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        stream: str,
        config: ConsumerConfig,
        item: Callable[[Msg], Item],
        handler: BatchHandler[Item],
        *,
        batch: int = 500,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        assert config.durable_name, "a runner consumes a durable"
        self._nc = nc
        self._js = js
        self._stream = stream
        self._config = config
        self._durable: str = config.durable_name
        self._item = item
        self._handler = handler
        self._batch = batch
        self._fetch_timeout_s = fetch_timeout_s
        """How long one fetch waits for messages. Short so that a lost connection (a fetch
        just times out then) is noticed within about this long."""

    async def run(self) -> None:
        """Consume until cancelled or until something fails (raised; see the module's
        docstring). Raises :class:`GiveUp` when JetStream refuses the durable's config."""
        self._check_connected()
        try:
            # creates the durable if it was deleted (then it starts over from its deliver
            # policy: the handler is idempotent), changes nothing if it is as configured
            await self._js.add_consumer(self._stream, self._config)
        except BadRequestError as exc:
            raise GiveUp(
                f"JetStream refuses consumer {self._durable} on {self._stream}: {exc.description}"
            ) from exc
        sub = await self._js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        try:
            while True:
                msgs = await self._fetch(sub)
                if msgs:
                    await self._handle(msgs)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _check_connected(self) -> None:
        if self._nc.is_closed:
            raise ConnectionClosedError
        if not self._nc.is_connected:
            raise ConnectionReconnectingError

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await sub.fetch(self._batch, timeout=self._fetch_timeout_s)
        except TimeoutError:
            # nats-py's fetch can turn a cancellation that meets its own timeout into a
            # TimeoutError: honour the cancellation, or shutdown would wait on a runner that
            # keeps fetching
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            # while NATS reconnects a fetch only ever times out: say it is down instead
            self._check_connected()
            return []

    async def _handle(self, msgs: list[Msg]) -> None:
        try:
            await self._handler.handle([self._item(m) for m in msgs])
        except Exception:
            for msg in msgs:
                with contextlib.suppress(Exception):  # else redelivered after the ack wait
                    await msg.nak()
            raise
        for msg in msgs:
            await msg.ack()
