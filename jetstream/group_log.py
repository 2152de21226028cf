"""Group timelines in JetStream (implements core.ports.GroupLog)."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetstream.publisher import WRONG_LAST_SEQUENCE, Publisher, PublishError
from jetstream.streams import JetStreamSettings


class _Id(msgspec.Struct):
    id: str = ""


_decode_id = msgspec.json.Decoder(_Id).decode


class JetStreamGroupLog:
    """Reads through direct gets; writes through the process's one
    :class:`~jetstream.publisher.Publisher`, like every JetStream write."""

    def __init__(
        self, js: JetStreamContext, settings: JetStreamSettings, publisher: Publisher
    ) -> None:
        self._js = js
        self._s = settings
        self._publisher = publisher

    def subject(self, group_id: str) -> str:
        return f"{self._s.groups_subject}.{group_id}"

    async def last(self, group_id: str) -> tuple[int, str]:
        try:
            msg = await self._js.get_msg(
                self._s.groups_stream, subject=self.subject(group_id), direct=True
            )
        except NotFoundError:
            return 0, ""
        return int(msg.seq or 0), _decode_id(msg.data or b"{}").id

    async def append(
        self, group_id: str, data: bytes, expected_seq: int, dedupe_key: str
    ) -> tuple[int, bytes] | None:
        headers = {
            "Nats-Expected-Stream": self._s.groups_stream,
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            "Nats-Msg-Id": dedupe_key,
        }
        try:
            ack = await self._publisher.write(self.subject(group_id), data, headers)
        except PublishError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:  # another writer came first
                return None
            raise
        if ack.duplicate:  # a resend within the duplicate window: the first write stands
            first = await self._js.get_msg(self._s.groups_stream, seq=ack.seq, direct=True)
            return ack.seq, first.data or b""
        return ack.seq, data
