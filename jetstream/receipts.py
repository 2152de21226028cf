"""Receipt marks in the JetStream KV bucket ``chat_receipts`` (implements
core.ports.ReceiptStore): key ``<conv>.<user>``, value ``{"delivered": id, "read": id}``."""

from __future__ import annotations

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from core.model import ReceiptState
from jetstream.inbox import JetStreamInbox


class _Marks(msgspec.Struct):
    delivered: str = ""
    read: str = ""


_decode = msgspec.json.Decoder(_Marks).decode
_encode = msgspec.json.Encoder().encode


class KvReceiptStore:
    def __init__(self, kv: KeyValue, bucket: str, reader: JetStreamInbox) -> None:
        self._kv = kv
        self._bucket = bucket
        self._reader = reader

    async def advance(
        self, conv: str, user: str, delivered: str | None, read: str | None
    ) -> ReceiptState | None:
        key = f"{conv}.{user}"
        while True:
            try:
                entry = await self._kv.get(key)
                marks, revision = _decode(entry.value or b"{}"), entry.revision
            except KeyNotFoundError:
                marks, revision = _Marks(), 0
            new = _Marks(max(marks.delivered, delivered or ""), max(marks.read, read or ""))
            if new == marks:
                return None
            try:
                if revision:
                    await self._kv.update(key, _encode(new), last=revision)
                else:
                    await self._kv.create(key, _encode(new))
            except KeyWrongLastSequenceError:
                continue  # another device moved it meanwhile: read again
            return ReceiptState(user, new.delivered, new.read)

    async def get(self, conv: str, user: str) -> ReceiptState:
        try:
            marks = _decode((await self._kv.get(f"{conv}.{user}")).value or b"{}")
        except KeyNotFoundError:
            return ReceiptState(user)
        return ReceiptState(user, marks.delivered, marks.read)

    async def all(self, conv: str) -> list[ReceiptState]:
        # the newest entry of every key under <conv>. in one batched direct get
        prefix = f"$KV.{self._bucket}.{conv}."
        request: dict[str, object] = {"multi_last": [f"{prefix}*"], "batch": 1000}
        out = []
        for msg in await self._reader.direct_batch(f"KV_{self._bucket}", request):
            subject = (msg.headers or {}).get("Nats-Subject", "")
            if msg.data:
                marks = _decode(msg.data)
                out.append(ReceiptState(subject.removeprefix(prefix), marks.delivered, marks.read))
        return sorted(out, key=lambda s: s.user)
