"""Send ledger and device cursors in JetStream KV buckets."""

from __future__ import annotations

import hashlib

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from core.model import SendRecord

_decode_record = msgspec.json.Decoder(SendRecord).decode
_encode = msgspec.json.Encoder().encode


def _send_key(sender: str, client_id: str) -> str:
    # Client ids are free text; KV keys are not. The hash keeps keys valid and fixed in size.
    return f"{sender}.{hashlib.sha256(client_id.encode()).hexdigest()[:32]}"


class KvSendLedger:
    """Implements core.ports.SendLedger. ``create`` is an atomic compare-and-set (expected last
    subject sequence 0), so two processes racing on one key cannot both claim it."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def claim(self, sender: str, client_id: str, record: SendRecord) -> SendRecord | None:
        key = _send_key(sender, client_id)
        for _ in range(3):
            try:
                await self._kv.create(key, _encode(record))
                return None
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:  # expired between the two calls: claim again
                continue
            if entry.value:
                return _decode_record(entry.value)
        raise RuntimeError(f"send ledger key {key} keeps changing")

    async def complete(self, sender: str, client_id: str, record: SendRecord) -> None:
        await self._kv.put(_send_key(sender, client_id), _encode(record))


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
