"""A frame fuzzer against a real server: whatever a client sends over its WebSocket, the server
answers only what docs/protocol.md documents, as websockets' own ``fuzzing/`` harnesses check
that its parser only accepts or raises documented errors.

Hypothesis generates the frames (random bytes, invalid UTF-8, deep nesting, oversized frames,
and JSON objects of every client frame type whose fields hold NULs, subject characters and
values of the wrong type); one real WebSocket carries them, reconnecting only when a
documented close code says the connection is over. Every frame is followed by a sentinel
request, so the answers between the two belong to it (answers carrying a ``ref`` are matched
by it). Checked: every server frame is a documented frame type, every error code a documented
one (parsed from docs/protocol.md's table), every close 1007 or 1009 and never without a
close frame, no ``internal`` or ``unavailable`` answer, no traceback in the server's log, and
the server's memory bounded.

500 frames by default (a few seconds); ``JETCHAT_FUZZ_FRAMES=20000`` for a long run. Generation
only: shrinking would need the live server per example, and a failure prints the frame.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import websockets
from helpers import device, new_user
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from core.close import CloseCode

FRAMES = int(os.environ.get("JETCHAT_FUZZ_FRAMES", "500"))
MAX_MESSAGE_CHARS = 1000  # a frame cap of 4 * 1000 + 4096 bytes: oversized frames stay cheap
FRAME_CAP = 4 * MAX_MESSAGE_CHARS + 4096
RSS_GROWTH_BOUND = 150 * 2**20  # generous: the server's caches and the allocator's slack

DOCS = Path(__file__).parents[2] / "docs" / "protocol.md"
SERVER_FRAMES = {
    "welcome", "msg", "msgs", "caught_up", "resync_needed", "sent", "error", "pong", "history",
    "typing", "receipt", "receipts", "presence", "presence_list", "conversations",
}  # fmt: skip
CLOSES_THAT_END_A_FUZZED_SOCKET = {CloseCode.INVALID_PAYLOAD, CloseCode.MESSAGE_TOO_BIG}
BUG_ANSWERS = {"internal", "unavailable"}  # the stores are up: either one is a bug here


def documented_error_codes() -> set[str]:
    table = DOCS.read_text().split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))


# --- the frames ---------------------------------------------------------------------------

weird = st.text(
    alphabet=st.sampled_from(list('ab-_0.*> \x00\t\n"\\[]{}é\u2028'))
    | st.characters(exclude_categories=["Cs"]),
    max_size=24,
)
ids = st.sampled_from(["fuzzb", "group.x", "dm.fuzza.fuzzb", "0" * 24, "a.*", ">", ""]) | weird
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | weird
values = st.recursive(scalars | ids, lambda c: st.lists(c, max_size=3), max_leaves=6)

FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "hello": {"cursor": st.none() | st.integers(-5, 2**70) | values, "protocol": values},
    "send": {"client_id": ids, "to": ids, "text": weird | st.text(max_size=1200) | values},
    "ack": {"seq": st.integers(-5, 2**70) | values},
    "ping": {},
    "typing": {"conv": ids, "state": st.sampled_from(["start", "stop"]) | values},
    "read": {"conv": ids, "up_to": ids},
    "receipts": {"ref": ids, "conv": ids},
    "presence": {"ref": ids, "users": st.lists(ids, max_size=5) | values},
    "history": {
        "ref": ids,
        "conv": ids,
        "before": ids | st.none(),
        "after": ids | st.none(),
        "around": ids | st.none(),
        "limit": st.integers(-5, 200) | values,
    },
    "conversations": {"ref": ids, "limit": st.integers(-5, 600) | values},
}


@st.composite
def client_objects(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(FIELDS)) | weird)
    obj: dict[str, Any] = {"type": kind}
    for name, strategy in FIELDS.get(kind, {}).items():
        if draw(st.integers(0, 9)):  # sometimes missing
            obj[name] = draw(strategy | values) if draw(st.integers(0, 4)) == 0 else draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        obj[draw(weird)] = draw(values)
    return obj


@dataclass
class Fuzz:
    opcode: Opcode
    data: bytes
    obj: dict[str, Any] | None = None


def _json(obj: dict[str, Any]) -> Fuzz:
    return Fuzz(Opcode.TEXT, msgspec.json.encode(obj), obj)


def _deep(depth: int, unknown: bool) -> Fuzz:
    nested = b"[" * depth + b"]" * depth
    data = b'{"x":' + nested + b',"type":"ping"}' if unknown else nested
    return Fuzz(Opcode.TEXT, data)


fuzz_frames = st.one_of(
    client_objects().map(_json),
    client_objects().map(_json),
    client_objects().map(_json),
    st.binary(max_size=64).map(lambda b: Fuzz(Opcode.TEXT, b)),  # mostly invalid UTF-8
    st.text(max_size=64).map(lambda t: Fuzz(Opcode.TEXT, t.encode())),
    st.binary(max_size=64).map(lambda b: Fuzz(Opcode.BINARY, b)),
    st.builds(_deep, st.integers(20, 3000), st.booleans()),
    st.integers(FRAME_CAP + 1, FRAME_CAP + 5000).map(lambda n: Fuzz(Opcode.TEXT, b" " * n)),
)


def generate(n: int) -> list[Fuzz]:
    out: list[Fuzz] = []

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_frames)
    def collect(frame: Fuzz) -> None:
        out.append(frame)

    collect()
    return out


# --- the harness --------------------------------------------------------------------------


@dataclass
class Tally:
    frames: int = 0
    reconnects: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_the_server_answers_fuzzed_frames_only_as_documented(spawn):
    server = spawn(max_message_chars=str(MAX_MESSAGE_CHARS))
    url = server.base_url
    await new_user(url, "fuzzb")
    token = await device(url, await new_user(url, "fuzza"))
    codes = documented_error_codes()
    assert {"malformed", "unknown_type", "not_text", "internal"} <= codes
    frames = generate(FRAMES)
    tally = Tally()
    ws_url = url.replace("http", "ws") + "/v1/ws"
    headers = {"authorization": f"Bearer {token}"}

    async def connect() -> websockets.ClientConnection:
        ws = await websockets.connect(ws_url, additional_headers=headers, max_size=None)
        assert msgspec.json.decode(await ws.recv())["type"] == "welcome"
        return ws

    ws = await connect()
    rss_before = rss(server.pid)
    by_ref: dict[str, list[Fuzz]] = {}  # ref or client_id -> the frames that carried it

    def check(answer: dict[str, Any], fuzz: Fuzz) -> None:
        assert answer.get("type") in SERVER_FRAMES, (answer, fuzz)
        if answer["type"] != "error":
            return
        code = answer["code"]
        tally.errors[code] = tally.errors.get(code, 0) + 1
        assert code in codes, (answer, fuzz)
        ref = answer.get("ref")
        owners = by_ref.get(ref, [fuzz]) if isinstance(ref, str) else [fuzz]
        assert code not in BUG_ANSWERS, (answer, owners, server.log_tail())

    for n, fuzz in enumerate(frames):
        tally.frames += 1
        sentinel = f"sentinel-{n}"
        for name in ("ref", "client_id"):
            if fuzz.obj is not None and isinstance(fuzz.obj.get(name), str):
                by_ref.setdefault(fuzz.obj[name], []).append(fuzz)
        try:
            ws.protocol.send_frame(Frame(fuzz.opcode, fuzz.data))
            ws.send_data()
            await ws.send(
                msgspec.json.encode(
                    {"type": "receipts", "ref": sentinel, "conv": "dm.nobody1.nobody2"}
                ).decode()
            )
            async with asyncio.timeout(10):
                while True:
                    answer = msgspec.json.decode(await ws.recv())
                    if answer.get("ref") == sentinel:
                        assert answer["code"] == "forbidden", answer
                        break
                    check(answer, fuzz)
        except TimeoutError:
            previous = [f.data[:120] for f in frames[max(0, n - 5) : n]]
            raise AssertionError(
                f"no answer within 10 s after {fuzz} (before it: {previous}); "
                f"server log: {server.log_tail()}"
            ) from None
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, f"dropped without a close frame after {fuzz}"
            code = closed.rcvd.code
            assert code in CLOSES_THAT_END_A_FUZZED_SOCKET, (closed.rcvd, fuzz)
            tally.reconnects[code] = tally.reconnects.get(code, 0) + 1
            ws = await connect()
    await ws.close()
    rss_after = rss(server.pid)
    log = server.log_path.read_text()
    print(  # the run's summary, shown with pytest -s
        f"\nfuzzed {tally.frames} frames; closes {tally.reconnects}; errors {tally.errors}; "
        f"RSS {rss_before >> 20} -> {rss_after >> 20} MiB"
    )
    assert rss_after - rss_before < RSS_GROWTH_BOUND
    assert "Traceback" not in log, log[-3000:]
