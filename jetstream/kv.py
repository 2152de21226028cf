"""Send ledger and device cursors in JetStream KV buckets."""

from __future__ import annotations

import hashlib

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from core.model import SendRecord
from jetstream.publisher import WRONG_LAST_SEQUENCE, Publisher, PublishError

_decode_record = msgspec.json.Decoder(SendRecord).decode
_encode = msgspec.json.Encoder().encode


def _send_key(sender: str, client_id: str) -> str:
    # Client ids are free text; KV keys are not. The hash keeps keys valid and fixed in size.
    return f"{sender}.{hashlib.sha256(client_id.encode()).hexdigest()[:32]}"


class KvSendLedger:
    """Implements core.ports.SendLedger. A claim is an atomic compare-and-set (expected last
    subject sequence 0), so two processes racing on one key cannot both claim it.

    Writes go through the process's :class:`~jetstream.publisher.Publisher` (the key's
    subject in the bucket's stream, as ``kv.create``/``kv.put`` would), reads through the
    bucket."""

    def __init__(self, kv: KeyValue, bucket: str, publisher: Publisher) -> None:
        self._kv = kv
        self._publisher = publisher
        self._subject = f"$KV.{bucket}."

    async def _write(self, key: str, record: SendRecord, headers: dict[str, str] | None) -> None:
        await self._publisher.write(self._subject + key, _encode(record), headers)

    async def claim(self, sender: str, client_id: str, record: SendRecord) -> SendRecord | None:
        key = _send_key(sender, client_id)
        for _ in range(3):
            try:
                await self._write(key, record, {"Nats-Expected-Last-Subject-Sequence": "0"})
                return None
            except PublishError as err:
                if err.err_code != WRONG_LAST_SEQUENCE:
                    raise
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:  # expired between the two calls: claim again
                continue
            if entry.value:
                return _decode_record(entry.value)
        raise RuntimeError(f"send ledger key {key} keeps changing")

    async def complete(self, sender: str, client_id: str, record: SendRecord) -> None:
        await self._write(_send_key(sender, client_id), record, None)


class KvCursorStore:
    """Implements core.ports.CursorStore."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, user: str, device: str) -> int | None:
        try:
            entry = await self._kv.get(f"{user}.{device}")
        except KeyNotFoundError:
            return None
        return int(entry.value) if entry.value else None

    async def put(self, user: str, device: str, seq: int) -> None:
        await self._kv.put(f"{user}.{device}", str(seq).encode())
