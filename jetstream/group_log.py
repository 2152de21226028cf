"""Group timelines in JetStream (implements core.ports.GroupLog)."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from jetstream.streams import JetStreamSettings

_WRONG_LAST_SEQUENCE = 10071


class _Id(msgspec.Struct):
    id: str = ""


_decode_id = msgspec.json.Decoder(_Id).decode


class JetStreamGroupLog:
    def __init__(self, nc: NATS, js: JetStreamContext, settings: JetStreamSettings) -> None:
        self._nc = nc
        self._js = js
        self._s = settings

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
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            "Nats-Msg-Id": dedupe_key,
        }
        try:
            ack = await self._js.publish(
                self.subject(group_id),
                data,
                timeout=self._s.publish_timeout_s,
                stream=self._s.groups_stream,
                headers=headers,
            )
        except BadRequestError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return None
            raise
        if ack.duplicate:  # a resend within the duplicate window: the first write stands
            first = await self._js.get_msg(self._s.groups_stream, seq=ack.seq, direct=True)
            return ack.seq, first.data or b""
        return ack.seq, data
