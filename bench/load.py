"""The load generator: worker processes, each holding many client connections.

The benchmark process only coordinates: it hands every worker its connections and then
commands ("run a 1:1 step at this rate", "send these group messages"), and gathers what the
workers measured. Clients live in their own processes so that the figures are the server's,
not the limits of one Python process doing the clients' work and the measuring.

A message carries its send time (``time.perf_counter()``, the system-wide monotonic clock on
Linux, so comparable between processes), so a receiver in any process computes the latency of
what it gets. The same workers drive jetchat or Centrifugo (``Target.kind``) with the same
schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import resource
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

PAD = "x" * 100  # every benchmark message's text ends with this: a short chat line


@dataclass(frozen=True)
class Target:
    """What the workers connect to. ``kind`` is ``jetchat`` or ``centrifugo``. With several
    URLs (several jetchat processes), connection ``i`` goes to ``ws_urls[i % n]``."""

    kind: str
    ws_urls: tuple[str, ...]
    secret: str = ""  # Centrifugo's HMAC secret for connection tokens

    def url(self, i: int) -> str:
        return self.ws_urls[i % len(self.ws_urls)]


@dataclass(frozen=True)
class Peer:
    """One connection: a user, its token (jetchat) and where its messages go."""

    user: str
    token: str = ""


@dataclass
class WorkerSpec:
    target: Target
    pairs: list[tuple[Peer, Peer]] = field(default_factory=list)  # (sender, receiver)
    members: list[Peer] = field(default_factory=list)  # of the group ``group``
    group: str = ""
    sender: bool = False  # this worker's first member sends the group messages
    idle: list[Peer] = field(default_factory=list)


class Conn(Protocol):
    async def send(self, to: str, text: str) -> None: ...

    async def close(self) -> None: ...


OnText = Callable[[str], None]


# --- jetchat ------------------------------------------------------------------------------


class _Message(msgspec.Struct):
    text: str = ""


class _Frame(msgspec.Struct):
    type: str
    seq: int = 0
    message: msgspec.Raw = msgspec.Raw()  # an object in ``msg``, a string in ``error``


_decode_frame = msgspec.json.Decoder(_Frame).decode
_decode_message = msgspec.json.Decoder(_Message).decode
_encode = msgspec.json.Encoder().encode
_ACK_EVERY = 64  # a real client acknowledges as it goes; this one every 64 messages


class JetchatConn:
    """A lean jetchat WebSocket client: hello, then every ``msg`` frame's text to
    ``on_text``; sends are written without waiting for ``sent``."""

    def __init__(self, ws: ClientConnection, on_text: OnText) -> None:
        self._ws = ws
        self._on_text = on_text
        self._ids = itertools.count()
        self._prefix = secrets.token_hex(4)
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, peer: Peer, on_text: OnText) -> JetchatConn:
        ws = await websockets.connect(
            url,
            additional_headers={"authorization": f"Bearer {peer.token}"},
            compression=None,
            max_size=2**22,
            ping_interval=None,
            open_timeout=60,
        )
        await ws.send('{"type":"hello","cursor":null}')
        while _decode_frame(await ws.recv()).type != "caught_up":
            pass
        conn = cls(ws, on_text)
        conn._reader = asyncio.create_task(conn._read())
        return conn

    async def _read(self) -> None:
        unacked = 0
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                frame = _decode_frame(raw)
                if frame.type == "msg":
                    self._on_text(_decode_message(frame.message).text)
                    unacked += 1
                    if unacked >= _ACK_EVERY:
                        unacked = 0
                        await self._ws.send(f'{{"type":"ack","seq":{frame.seq}}}')

    async def send(self, to: str, text: str) -> None:
        cid = f"{self._prefix}{next(self._ids)}"
        frame = _encode({"type": "send", "client_id": cid, "to": to, "text": text})
        await self._ws.send(frame.decode())  # a text frame

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self._ws.close()


# --- Centrifugo ----------------------------------------------------------------------------


class CentrifugoConn:
    """The same over Centrifugo: a user's messages go to the channel ``personal.<user>``, a
    group's to its channel; publishing is not awaited (as jetchat's sends are not)."""

    def __init__(self, client: Any, on_text: OnText) -> None:
        self._client = client
        self._pending: set[asyncio.Task[None]] = set()
        client.on_publication = lambda _channel, data: on_text(data["text"])

    @classmethod
    async def open(
        cls, target: Target, peer: Peer, on_text: OnText, channels: Sequence[str]
    ) -> CentrifugoConn:
        from bench.centrifugo import CentrifugoClient, token

        client = CentrifugoClient(target.url(0), token(target.secret, peer.user))
        conn = cls(client, on_text)
        await client.connect()
        for channel in channels:
            await client.subscribe(channel)
        return conn

    async def send(self, to: str, text: str) -> None:
        channel = to if to.startswith("group.") else f"personal.{to}"
        task = asyncio.create_task(self._client.publish(channel, {"text": text}))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await self._client.close()


async def open_conn(target: Target, i: int, peer: Peer, on_text: OnText, group: str = "") -> Conn:
    if target.kind == "jetchat":
        return await JetchatConn.open(target.url(i), peer, on_text)
    channels = [f"personal.{peer.user}"] + ([group] if group else [])
    return await CentrifugoConn.open(target, peer, on_text, channels)


async def open_many(
    target: Target,
    peers: Sequence[Peer],
    on_text: Callable[[int], OnText],
    group: str = "",
    offset: int = 0,
) -> list[Conn]:
    """Open connections 100 at a time (a burst of thousands of upgrades at once only
    measures the listen backlog). Connection ``i`` goes to server ``i + offset``."""
    out: list[Conn] = []
    for start in range(0, len(peers), 100):
        chunk = peers[start : start + 100]
        out += await asyncio.gather(
            *(
                open_conn(target, start + i + offset, p, on_text(start + i), group)
                for i, p in enumerate(chunk)
            )
        )
    return out


def stamp(n: int = 0) -> str:
    """A message text: its number, its send time, then padding."""
    return f"{n}|{time.perf_counter():.6f}|{PAD}"


def unstamp(text: str) -> tuple[int, float]:
    n, at, _ = text.split("|", 2)
    return int(n), float(at)


# --- the worker process ----------------------------------------------------------------------


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.conns: list[Conn] = []
        self.latencies: list[float] = []
        self.group_seen: dict[int, tuple[float, float, int]] = {}  # n: (sent, last, count)
        self.idle_conns: list[Conn] = []

    async def open(self) -> dict[str, Any]:
        spec, target = self.spec, self.spec.target
        if spec.pairs:
            senders = [s for s, _ in spec.pairs]
            receivers = [r for _, r in spec.pairs]
            self.conns = await open_many(target, senders, lambda _: _ignore)
            # with several servers, each receiver is on another one than its sender
            self.conns += await open_many(target, receivers, lambda _: self._on_pair_text, offset=1)
        if spec.members:
            self.conns = await open_many(
                target, spec.members, lambda _: self._on_group_text, spec.group
            )
        return {"opened": len(self.conns)}

    def _on_pair_text(self, text: str) -> None:
        self.latencies.append(time.perf_counter() - unstamp(text)[1])

    def _on_group_text(self, text: str) -> None:
        now = time.perf_counter()
        n, at = unstamp(text)
        _, _, count = self.group_seen.get(n, (at, now, 0))
        self.group_seen[n] = (at, now, count + 1)

    async def pairs_step(self, rate_per_pair: float, seconds: float, start_at: float) -> Any:
        """Every sender sends at ``rate_per_pair`` for ``seconds``, from ``start_at`` (spread
        over the interval); then wait (at most 10 s) for the receivers to have everything."""
        self.latencies = []
        pairs = self.spec.pairs
        interval = 1.0 / rate_per_pair
        senders = self.conns[: len(pairs)]
        sent = 0

        async def talk(i: int) -> None:
            nonlocal sent
            conn, to = senders[i], pairs[i][1].user
            next_at = start_at + i * interval / len(pairs)
            while next_at < start_at + seconds:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await conn.send(to, stamp())
                sent += 1
                next_at += interval

        await asyncio.gather(*(talk(i) for i in range(len(pairs))))
        deadline = time.perf_counter() + 10
        while len(self.latencies) < sent and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return {"sent": sent, "latencies": self.latencies}

    async def group_send(self, count: int, gap_s: float, start_at: float) -> Any:
        """The sender sends ``count`` messages ``gap_s`` apart (0: all at once); every member
        notes when each arrived. Returns per message (sent at, last arrival, arrivals)."""
        self.group_seen = {}
        if self.spec.sender:
            await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
            for n in range(count):
                await self.conns[0].send(self.spec.group, stamp(n))
                if gap_s:
                    await asyncio.sleep(gap_s)
        expected = count * len(self.conns)
        deadline = time.perf_counter() + 30 + count * gap_s
        while (  # noqa: ASYNC110
            sum(c for _, _, c in self.group_seen.values()) < expected
            and time.perf_counter() < deadline
        ):
            await asyncio.sleep(0.02)
        return {"seen": self.group_seen, "members": len(self.conns)}

    async def open_idle(self) -> Any:
        self.idle_conns = await open_many(self.spec.target, self.spec.idle, lambda _: _ignore)
        return {"opened": len(self.idle_conns)}

    async def close(self) -> Any:
        await asyncio.gather(
            *(c.close() for c in self.conns + self.idle_conns), return_exceptions=True
        )
        self.conns, self.idle_conns = [], []
        return {}


def _ignore(_: str) -> None:
    pass


def raise_nofile() -> int:
    """Soft open-files limit up to the hard one (each connection is a file descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _worker_main(pipe: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
    raise_nofile()

    async def serve() -> None:
        worker = Worker(spec)
        loop = asyncio.get_running_loop()
        while True:
            op, args = await loop.run_in_executor(None, pipe.recv)
            if op == "exit":
                await worker.close()
                return
            try:
                result = await getattr(worker, op)(*args)
            except Exception as exc:
                result = {"error": repr(exc)}
            pipe.send(result)

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


class Workers:
    """The worker processes, commanded together: ``await workers.all("op", *args)`` runs
    ``Worker.op`` in every one and returns their results."""

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process with a running loop
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, spec), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    async def all(self, op: str, *args: Any) -> list[Any]:
        for pipe in self._pipes:
            pipe.send((op, args))
        results = await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self._pipes))
        for r in results:
            if isinstance(r, dict) and "error" in r:
                raise RuntimeError(f"a load worker failed: {r['error']}")
        return list(results)

    async def __aenter__(self) -> Workers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(Exception):
                pipe.send(("exit", ()))
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()


def split(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``n`` lists."""
    return [list(items[i::n]) for i in range(n)]
