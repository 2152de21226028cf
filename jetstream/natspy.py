"""Everything jetchat relies on in nats-py beyond its public API, and the check of it.

Two shortcuts take private paths of nats-py because the public ones cost too much where
jetchat spends most (the measurements are below, with each). Both are checked once, when the
JetStream adapters are built (:func:`check`, from ``jetchat.app.Services.start``): each probe
looks for the attributes it needs and then sends real messages through the path on the
connection. A shortcut whose probe fails is not used: its public-API fallback is slower, or
bigger, but gives the same answers, and the check says so in the log (one line, naming the
nats-py version and what is missing). ``check(..., require=True)`` refuses instead, with one
:class:`NatsPyChanged` naming them all (the tests use it: on the nats-py of ``uv.lock`` both
shortcuts must be there).

No module but this one touches a private attribute of nats-py.

- **Raw replies** (:meth:`NatsPy.route_raw_replies`): the replies to inbox reads are taken
  from nats-py's protocol parser before it builds a message of each. Profiled on a
  10,000-message catch-up, about half of an inbox read went into nats-py parsing every reply's
  seven header lines into a dict, building a ``Msg`` and passing it through two queues, where a
  read needs only ``Nats-Sequence``; without that, reads run about twice as fast. Relies on:
  ``Client._process_msg(sid, subject, reply, data, headers)``, a coroutine the parser looks up
  on the client for every message (so an instance attribute replaces it), given the subject as
  bytes and the headers raw (``b"NATS/1.0..."``); ``Subscription._id``, the sid it is called
  with; ``Client.stats``, kept up to date by hand. Fallback: the reply subscription's callback
  gets every reply as a ``Msg``.
- **Dispatch subscriptions** (:meth:`NatsPy.subscribe_dispatch`): nats-py gives each callback
  subscription a task and an asyncio.Queue of its own (about 4 KB); with one subscription per
  connected user that was most of an idle connection's cost. So the subscription is made with
  ``future=`` set to a :class:`Dispatcher`: nats-py then hands every message to its
  ``set_result``, synchronously, in order, from the task reading the NATS connection (the path
  meant for a request's one reply, which never ends a subscription by itself), and makes
  neither task nor queue; the queue it makes anyway stays empty on this path and is let go
  (``Subscription._pending_queue = None``). Relies on: ``subscribe(future=...)`` calling
  ``cancelled()`` then ``set_result(msg)`` on what it is given, for every message, and nothing
  but ``pending_msgs`` reading ``_pending_queue`` of such a subscription. Fallback: a callback
  subscription whose callback calls the dispatcher (same order, one task and queue more).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol, cast

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

try:
    VERSION = version("nats-py")
except PackageNotFoundError:  # pragma: no cover - run from a source tree
    VERSION = "unknown"

_PROCESS_MSG_PARAMETERS = ["sid", "subject", "reply", "data", "headers"]
_PROBE_TIMEOUT_S = 5
"""How long a probe waits for its own messages to come back (a round trip to the server)."""


class NatsPyChanged(RuntimeError):
    """This nats-py lacks what a required shortcut relies on."""


class RawReader(Protocol):
    def reply(self, headers: bytes | None, data: bytes) -> None:
        """One reply as nats-py's parser has it: ``headers`` raw (``b"NATS/1.0..."``, None
        without headers). Runs inside nats-py's reader: must not raise or block."""


class Dispatcher:
    """Receives a subscription's messages one by one, in order, synchronously from the task
    reading the NATS connection. Subclasses implement ``set_result(msg)`` (so named because
    nats-py calls it as it would a Future's): it must not raise or block."""

    __slots__ = ()

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        raise NotImplementedError


class NatsPy:
    """The shortcuts :func:`check` found usable on this nats-py; each method takes its public
    fallback when its shortcut is off."""

    __slots__ = ("dispatch_subscriptions", "raw_replies", "version")

    def __init__(self, raw_replies: bool, dispatch_subscriptions: bool) -> None:
        self.version = VERSION
        self.raw_replies = raw_replies
        self.dispatch_subscriptions = dispatch_subscriptions

    def route_raw_replies(
        self, nc: NATS, sub: Subscription, readers: Mapping[bytes, RawReader]
    ) -> bool:
        """Hand the replies that reach ``sub`` on ``<anything>.<token>``, for a token in
        ``readers`` (looked up per message: add and remove readers as reads start and end),
        to that reader raw, before nats-py parses them; every other message goes through
        nats-py unchanged. False (nothing done) if the shortcut is off: ``sub``'s own callback
        then gets them all."""
        if not self.raw_replies:
            return False
        _route_raw(nc, sub._id, readers)
        return True

    async def subscribe_dispatch(
        self, nc: NATS, subject: str, dispatcher: Dispatcher
    ) -> Subscription:
        """Subscribe ``dispatcher`` to ``subject``: see the module's "Dispatch subscriptions"."""
        if not self.dispatch_subscriptions:

            async def deliver(msg: Msg) -> None:
                dispatcher.set_result(msg)

            return await nc.subscribe(subject, cb=deliver)
        sub = await nc.subscribe(subject, future=cast("asyncio.Future[Msg]", dispatcher))
        sub._pending_queue = None  # type: ignore[assignment]
        return sub


async def check(
    nc: NATS,
    *,
    raw_replies: bool = True,
    dispatch_subscriptions: bool = True,
    require: bool = False,
) -> NatsPy:
    """Probe each shortcut on the connected ``nc`` (a few messages to itself, once at
    start-up) and log which path each takes. ``raw_replies=False`` or
    ``dispatch_subscriptions=False`` turns a shortcut off without probing it (the tests use
    that to run the fallbacks). With ``require``, raise :class:`NatsPyChanged` rather than
    fall back."""
    raw_missing = await _probe_raw_replies(nc) if raw_replies else "off"
    dispatch_missing = await _probe_dispatch(nc) if dispatch_subscriptions else "off"
    missing = [
        f"{name}: {why}"
        for name, why in (
            ("raw replies", raw_missing),
            ("dispatch subscriptions", dispatch_missing),
        )
        if why and why != "off"
    ]
    if require and missing:
        raise NatsPyChanged(f"nats-py {VERSION} lacks what jetchat relies on: {'; '.join(missing)}")
    natspy = NatsPy(raw_missing == "", dispatch_missing == "")
    reads = "parse replies raw" if natspy.raw_replies else "take nats-py messages"
    live = "dispatch in the reader" if natspy.dispatch_subscriptions else "use callback tasks"
    paths = f"inbox reads {reads}, live subscriptions {live}"
    if missing:
        log.warning(
            "nats-py %s changed; slower fallbacks in use (%s): %s",
            VERSION,
            paths,
            "; ".join(missing),
        )
    else:
        log.info("nats-py %s: %s", VERSION, paths)
    return natspy


def _route_raw(nc: NATS, reply_sid: int, readers: Mapping[bytes, RawReader]) -> Callable[[], None]:
    """Wrap ``nc._process_msg`` for one sid; returns what undoes it (if still in place)."""
    # nats-py types headers as bytes; its parser passes None for a message without any
    process: Callable[..., Coroutine[Any, Any, None]] = nc._process_msg
    stats = nc.stats

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if sid == reply_sid and (reader := readers.get(subject.rpartition(b".")[2])) is not None:
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            reader.reply(headers, data)
        else:
            await process(sid, subject, reply, data, headers)

    replaced = "_process_msg" in vars(nc)  # by an earlier wrap: undo puts that one back
    nc._process_msg = process_msg  # type: ignore[method-assign]

    def undo() -> None:
        if vars(nc).get("_process_msg") is not process_msg:
            return  # wrapped again since: leave the chain as it is
        if replaced:
            nc._process_msg = process  # type: ignore[method-assign]
        else:
            del nc._process_msg

    return undo


class _Replies:
    __slots__ = ("got",)

    def __init__(self) -> None:
        self.got: list[tuple[bytes | None, bytes]] = []

    def reply(self, headers: bytes | None, data: bytes) -> None:
        self.got.append((headers, data))


async def _probe_raw_replies(nc: NATS) -> str:
    """What the raw-replies shortcut lacks on ``nc`` ("" if nothing)."""
    process = getattr(nc, "_process_msg", None)
    if process is None or not inspect.iscoroutinefunction(process):
        return "no coroutine Client._process_msg"
    parameters = list(inspect.signature(process).parameters)
    if parameters != _PROCESS_MSG_PARAMETERS:
        return f"Client._process_msg takes ({', '.join(parameters)})"
    stats = getattr(nc, "stats", None)
    if not isinstance(stats, dict) or not {"in_msgs", "in_bytes"} <= stats.keys():
        return "no Client.stats with in_msgs and in_bytes"
    prefix = nc.new_inbox()
    passed: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        passed.append(msg)

    sub = await nc.subscribe(f"{prefix}.*", cb=on_msg)
    try:
        if not isinstance(getattr(sub, "_id", None), int):
            return "no Subscription._id"
        replies = _Replies()
        undo = _route_raw(nc, sub._id, {b"raw": replies})
        try:
            await nc.publish(f"{prefix}.raw", b"probe", headers={"Jetchat-Probe": "1"})
            await nc.publish(f"{prefix}.other", b"other")
            if not await _until(nc, lambda: len(replies.got) + len(passed) >= 2):
                return "the probe's messages did not come back"
        finally:
            undo()
        if not replies.got:
            return "the parser did not call the replaced Client._process_msg"
        headers, data = replies.got[0]
        if len(replies.got) != 1 or data != b"probe":
            return f"the replaced Client._process_msg got {replies.got!r}"
        if not headers or not headers.startswith(b"NATS/1.0") or b"Jetchat-Probe: 1" not in headers:
            return f"headers reached Client._process_msg as {headers!r}, not raw"
        if [m.data for m in passed] != [b"other"]:
            return "other messages of the subscription did not go through unchanged"
        return ""
    finally:
        await sub.unsubscribe()


class _Collect(Dispatcher):
    __slots__ = ("got",)

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def set_result(self, msg: Msg) -> None:
        self.got.append(msg.data)


async def _probe_dispatch(nc: NATS) -> str:
    """What the dispatch-subscriptions shortcut lacks on ``nc`` ("" if nothing)."""
    if "future" not in inspect.signature(nc.subscribe).parameters:
        return "Client.subscribe takes no future="
    subject = nc.new_inbox()
    collect = _Collect()
    sub = await nc.subscribe(subject, future=cast("asyncio.Future[Msg]", collect))
    try:
        if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue):
            return "no Subscription._pending_queue"
        sub._pending_queue = None  # type: ignore[assignment]
        for data in (b"1", b"2", b"3"):
            await nc.publish(subject, data)
        if not await _until(nc, lambda: len(collect.got) >= 3):
            return f"a subscription with future= received {collect.got!r} of 1, 2, 3"
        if collect.got != [b"1", b"2", b"3"]:
            return f"a subscription with future= received {collect.got!r}"
        return ""
    finally:
        await sub.unsubscribe()


async def _until(nc: NATS, done: Callable[[], bool]) -> bool:
    """Flush (a round trip: what was published has come back), then give callbacks that run
    in tasks a moment; True once ``done()``."""
    await nc.flush(timeout=_PROBE_TIMEOUT_S)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PROBE_TIMEOUT_S
    while not done():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True
