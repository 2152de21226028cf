"""Device revocations over core NATS (implements core.ports.RevocationBus).

Subject ``chat.ctl.revoked.<device>``; every process subscribes to the wildcard once. Revocations
are rare, so each process hearing all of them costs nothing, and no per-connection
subscription is needed.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

SUBJECT = "chat.ctl.revoked"


class NatsRevocationBus:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    async def publish(self, device_id: str) -> None:
        await self._nc.publish(f"{SUBJECT}.{device_id}")

    async def subscribe(self, on_revoked: Callable[[str], None]) -> None:
        async def handle(msg: Msg) -> None:
            on_revoked(msg.subject.rpartition(".")[2])

        await self._nc.subscribe(f"{SUBJECT}.*", cb=handle)
