"""An async Python client for jetchat (WebSocket for messages, HTTP for accounts).

It keeps the promises the protocol makes easy to keep: messages are de-duplicated by id,
a conversation is kept in message-id order, unacknowledged sends are resent with the same
client id after a reconnect, and reconnecting resumes from the last received inbox sequence.

    login = await log_in("http://127.0.0.1:8000", "alice", "secret pw", "laptop")
    async with ChatClient("http://127.0.0.1:8000", login.token) as alice:
        sent = await alice.send("bob", "hi")
        msg = await alice.next_message()
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import uuid
from typing import Any

import httpx
import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

from core.close import CloseCode
from core.model import ChatMessage, ReceiptState, Sent
from core.protocol import (
    FIRST_ID,
    MAX_PAGE,
    PROTOCOL_VERSION,
    CaughtUp,
    Conversations,
    ErrorFrame,
    HistoryPage,
    MsgFrame,
    PresenceEvent,
    PresenceItem,
    PresenceList,
    ReceiptEvent,
    Receipts,
    ResyncNeeded,
    SentFrame,
    ServerFrame,
    TypingEvent,
    Welcome,
)

log = logging.getLogger(__name__)

HISTORY_OVERLAP_MS = 60_000
"""How far before the newest message it has a client refetches history after a resync."""


def _close_code(code: int | None) -> int | None:
    """A received close code as a :class:`CloseCode` when it is one of the server's, so that
    logs and comparisons name it; any other code as it is."""
    try:
        return CloseCode(code) if code is not None else None
    except ValueError:
        return code


class Login(msgspec.Struct, frozen=True):
    token: str
    user_id: str
    device_id: str
    expires_at: int


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Delivery(msgspec.Struct, frozen=True, gc=False):
    seq: int  # the inbox sequence; 0 for a message fetched from history
    message: ChatMessage


class _Msgs(msgspec.Struct, tag="msgs", tag_field="type"):
    """core.protocol.MsgsFrame, decoded straight into what next_message returns."""

    items: list[Delivery]


_Frame = ServerFrame | MsgFrame | _Msgs
_decode_frame = msgspec.json.Decoder(_Frame).decode


_encode = msgspec.json.Encoder().encode


async def _call(
    base_url: str,
    method: str,
    path: str,
    token: str | None = None,
    json: Any = None,
    proxy: str | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30, proxy=proxy) as http:
        resp = await http.request(method, path, json=json, headers=headers, params=params)
    if resp.status_code >= 400:
        body = resp.json()
        raise ApiError(resp.status_code, body.get("code", ""), body.get("message", ""))
    return resp.json() if resp.content else None


async def sign_up(base_url: str, username: str, password: str, display_name: str = "") -> Any:
    body = {"username": username, "password": password, "display_name": display_name}
    return await _call(base_url, "POST", "/v1/accounts", json=body)


async def log_in(base_url: str, username: str, password: str, device_name: str = "") -> Login:
    body = {"username": username, "password": password, "device_name": device_name}
    return msgspec.convert(await _call(base_url, "POST", "/v1/sessions", json=body), Login)


async def send_http(base_url: str, token: str, to: str, text: str, client_id: str) -> Sent:
    body = {"client_id": client_id, "to": to, "text": text}
    return msgspec.convert(await _call(base_url, "POST", "/v1/messages", token, body), Sent)


class _PollBody(msgspec.Struct):
    cursor: int
    frames: list[_Frame]


_decode_poll = msgspec.json.Decoder(_PollBody).decode


class ChatClient:
    """One device's connection. ``cursor`` is the last inbox sequence it has (None: let the
    server use the position it stored for this device).

    ``transport``: "ws" (WebSocket), "longpoll" (long polling to receive, plain HTTP for the
    rest, for networks whose proxies block WebSockets), or "auto" (WebSocket, falling back to
    long polling when the upgrade fails). The interface is the same for all."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        cursor: int | None = None,
        auto_ack: bool = True,
        reconnect: bool = True,
        catch_up_from_history: bool = True,
        max_size: int = 1 << 20,
        transport: str = "ws",
        proxy: str | None = None,
        poll_timeout: float = 25,
    ) -> None:
        assert transport in ("ws", "longpoll", "auto")
        self.transport = transport
        self.mode = "longpoll" if transport == "longpoll" else "ws"
        self.proxy = proxy
        self.poll_timeout = poll_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._ws_worked = False
        self.base_url = base_url
        self.ws_url = base_url.replace("http", "ws", 1) + "/v1/ws"
        self.token = token
        self.cursor = cursor
        self.auto_ack = auto_ack
        self.reconnect = reconnect
        self.catch_up_from_history = catch_up_from_history
        self.max_size = max_size
        self.caught_up = asyncio.Event()
        self.connected = asyncio.Event()
        self.resync_needed: ResyncNeeded | None = None
        self.errors: list[ErrorFrame] = []
        self.close_codes: list[int | None] = []
        """Why each connection ended: a WebSocket close code (a :class:`CloseCode` when it is
        one the server sends; None if the socket dropped without one), or the HTTP status
        of a refused upgrade or poll."""
        self.conversations: dict[str, list[ChatMessage]] = {}
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._seen: set[str] = set()
        self._pending: dict[str, tuple[bytes, asyncio.Future[Sent]]] = {}
        self._requests: dict[str, asyncio.Future[object]] = {}
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._ids = itertools.count()

    async def __aenter__(self) -> ChatClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 10) -> None:
        """Connect (and keep reconnecting in the background if ``reconnect``)."""
        self._runner = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    async def send(
        self, to: str, text: str, client_id: str | None = None, timeout: float = 30
    ) -> Sent:
        """Send and wait for "sent". The frame is resent after each reconnect until answered."""
        client_id = client_id or uuid.uuid4().hex
        frame = _encode({"type": "send", "client_id": client_id, "to": to, "text": text})
        future: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        self._pending[client_id] = (frame, future)
        if self.mode == "longpoll":
            self._spawn(self._send_over_http(client_id, frame))
        elif self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(frame.decode())
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            if future.done():
                self._pending.pop(client_id, None)

    async def history(
        self,
        conv: str,
        *,
        before: str | None = None,
        after: str | None = None,
        around: str | None = None,
        limit: int = 50,
        timeout: float = 10,
    ) -> list[ChatMessage]:
        """A page of history over the WebSocket (raises ApiError, e.g. ``forbidden``)."""
        frame = {"type": "history", "conv": conv, "limit": limit}
        for key, value in (("before", before), ("after", after), ("around", around)):
            if value is not None:
                frame[key] = value
        answer = await self._request(frame, timeout)
        assert isinstance(answer, HistoryPage)
        return answer.messages

    async def _request(self, frame: dict[str, Any], timeout: float) -> object:
        if self.mode == "longpoll":
            return await asyncio.wait_for(self._request_over_http(frame), timeout)
        ref = f"r{next(self._ids)}"
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._requests[ref] = future
        try:
            assert self._ws is not None, "not connected"
            await self._ws.send(_encode({**frame, "ref": ref}).decode())
            return await asyncio.wait_for(future, timeout)
        finally:
            self._requests.pop(ref, None)

    async def typing(self, conv: str, state: str = "start") -> None:
        """Tell the conversation's other members I am typing (fire-and-forget)."""
        if self.mode == "longpoll":
            await self._http("POST", f"/v1/conversations/{conv}/typing", json={"state": state})
        elif self._ws is not None:
            frame = _encode({"type": "typing", "conv": conv, "state": state}).decode()
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(frame)

    async def read(self, conv: str, up_to: str) -> None:
        """I read ``conv`` up to message ``up_to`` (fire-and-forget; errors come as frames)."""
        if self.mode == "longpoll":
            await self._http("POST", f"/v1/conversations/{conv}/read", json={"up_to": up_to})
        elif self._ws is not None:
            frame = _encode({"type": "read", "conv": conv, "up_to": up_to}).decode()
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(frame)

    async def receipts(self, conv: str, timeout: float = 10) -> list[ReceiptState]:
        """Every member's delivered and read marks in ``conv``, now."""
        answer = await self._request({"type": "receipts", "conv": conv}, timeout)
        assert isinstance(answer, Receipts)
        return answer.states

    async def presence(self, users: list[str], timeout: float = 10) -> list[PresenceItem]:
        answer = await self._request({"type": "presence", "users": users}, timeout)
        assert isinstance(answer, PresenceList)
        return answer.users

    async def ping(self) -> None:
        """The heartbeat (every 30 s keeps the device online; the server answers pong)."""
        if self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send('{"type":"ping"}')

    async def next_event(self, timeout: float = 10) -> object:
        """The next ephemeral event (typing, receipt, presence)."""
        return await asyncio.wait_for(self._events.get(), timeout)

    async def send_raw(self, frame: str | bytes) -> None:
        """Send any frame as is (for tests of bad input)."""
        assert self._ws is not None
        await self._ws.send(frame)

    async def next_message(self, timeout: float = 10) -> Delivery:
        if not self._inbox.empty():  # no timer and no task when one is waiting already
            return self._inbox.get_nowait()
        return await asyncio.wait_for(self._inbox.get(), timeout)

    async def next_error(self, timeout: float = 10) -> ErrorFrame:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.errors:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("no error frame")
            await asyncio.sleep(0.01)
        return self.errors.pop(0)

    def conversation(self, conv: str) -> list[ChatMessage]:
        """The conversation as every device shows it: de-duplicated, in message-id order."""
        return list(self.conversations.get(conv, []))

    async def ack(self, seq: int) -> None:
        if self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(f'{{"type":"ack","seq":{seq}}}')

    # --- internals ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _http(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        return await _call(
            self.base_url, method, path, self.token, json=json, proxy=self.proxy, params=params
        )

    async def _send_over_http(self, client_id: str, frame: bytes) -> None:
        """Send until answered: resending with the same client id is always safe."""
        entry = self._pending.get(client_id)
        body = msgspec.json.decode(frame)
        backoff = 0.05
        while entry is not None and not entry[1].done() and not self._closing:
            try:
                sent = msgspec.convert(await self._http("POST", "/v1/messages", json=body), Sent)
            except ApiError as err:
                if err.status < 500:
                    entry[1].set_exception(err)
                    return
            except httpx.HTTPError:
                pass
            else:
                entry[1].set_result(sent)
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _request_over_http(self, frame: dict[str, Any]) -> object:
        kind, conv = frame["type"], frame.get("conv", "")
        if kind == "history":
            params: dict[str, Any] = {
                k: frame[k] for k in ("before", "after", "around", "limit") if k in frame
            }
            page = await self._http("GET", f"/v1/conversations/{conv}/messages", params=params)
            return HistoryPage("", conv, msgspec.convert(page["messages"], list[ChatMessage]))
        if kind == "receipts":
            states = await self._http("GET", f"/v1/conversations/{conv}/receipts")
            return Receipts("", conv, msgspec.convert(states, list[ReceiptState]))
        if kind == "presence":
            items = await self._http(
                "GET", "/v1/presence", params={"users": ",".join(frame["users"])}
            )
            return PresenceList("", msgspec.convert(items, list[PresenceItem]))
        raise ValueError(f"no HTTP call for {kind!r}")

    async def _poll_loop(self) -> None:
        for client_id, (pending, _) in list(self._pending.items()):
            self._spawn(self._send_over_http(client_id, pending))
        async with httpx.AsyncClient(
            base_url=self.base_url, proxy=self.proxy, timeout=self.poll_timeout + 15
        ) as http:
            auth = {"authorization": f"Bearer {self.token}"}
            while not self._closing:
                # until caught up, ask for what is there without waiting
                wait = self.poll_timeout if self.caught_up.is_set() else 0
                params: dict[str, Any] = {"timeout": wait, "protocol": PROTOCOL_VERSION}
                if self.cursor is not None:
                    params["cursor"] = self.cursor
                resp = await http.get("/v1/poll", params=params, headers=auth)
                if resp.status_code >= 400:
                    self.close_codes.append(resp.status_code)
                    self.connected.set()
                    body = resp.json()
                    raise ApiError(resp.status_code, body.get("code", ""), body.get("message", ""))
                self.connected.set()
                poll = _decode_poll(resp.content)
                got_messages = False
                for frame in poll.frames:
                    if isinstance(frame, ResyncNeeded):
                        self.resync_needed = frame
                        if self.catch_up_from_history:
                            await self._catch_up_from_history()
                            poll.cursor = max(frame.first_seq - 1, 0)
                        continue
                    got_messages |= isinstance(frame, MsgFrame | _Msgs)
                    self._handle(frame)
                self.cursor = poll.cursor
                if not got_messages:
                    self.caught_up.set()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            if self.mode == "longpoll":
                try:
                    await self._poll_loop()
                except ApiError:
                    raise
                except Exception as exc:
                    log.warning("poll failed: %r", exc)
                if not self.reconnect or self._closing:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            try:
                async with websockets.connect(
                    self.ws_url,
                    additional_headers={"authorization": f"Bearer {self.token}"},
                    max_size=self.max_size,
                    compression=None,
                    open_timeout=10,
                    proxy=self.proxy,
                ) as ws:
                    self._ws = ws
                    self._ws_worked = True
                    backoff = 0.05
                    await self._session(ws)
                self.close_codes.append(_close_code(ws.close_code))
            except Exception as exc:
                log.warning("connection failed: %r", exc)
                if self.transport == "auto" and self._ws is None and not self._ws_worked:
                    log.info("WebSocket unavailable; falling back to long polling")
                    self.mode = "longpoll"
                    continue
                if isinstance(exc, websockets.ConnectionClosed):
                    self.close_codes.append(_close_code(exc.rcvd.code) if exc.rcvd else None)
                if isinstance(exc, websockets.InvalidStatus) and not self.connected.is_set():
                    self.connected.set()  # wake connect(); the failure is in close_codes
                    self.close_codes.append(exc.response.status_code)
                    raise
            finally:
                self._ws = None
                self.caught_up.clear()
            if not self.reconnect or self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _session(self, ws: ClientConnection) -> None:
        # welcome comes first and says which protocol the server speaks; hello says which
        # one we speak (an older server refuses the field, so it is sent only when spoken)
        welcome = _decode_frame(await ws.recv())
        protocol = min(welcome.protocol, PROTOCOL_VERSION) if isinstance(welcome, Welcome) else 1
        hello: dict[str, Any] = {"type": "hello", "cursor": self.cursor}
        if protocol > 1:
            hello["protocol"] = protocol
        await ws.send(_encode(hello).decode())
        for unanswered, _ in list(self._pending.values()):
            await ws.send(unanswered.decode())
        self.connected.set()
        pending_ack = 0
        async for raw in ws:
            frame = _decode_frame(raw)
            if isinstance(frame, ResyncNeeded):
                self.resync_needed = frame
                if self.catch_up_from_history:
                    await self._catch_up_from_history()
                    # the inbox still holds everything from first_seq on: replay all of it
                    self.cursor = max(frame.first_seq - 1, 0)
                    await ws.send(_encode({**hello, "cursor": self.cursor}).decode())
                continue
            self._handle(frame)
            if isinstance(frame, MsgFrame | _Msgs):
                pending_ack += 1 if isinstance(frame, MsgFrame) else len(frame.items)
                if self.auto_ack and (pending_ack >= 100 or self.caught_up.is_set()):
                    pending_ack = 0
                    await ws.send(f'{{"type":"ack","seq":{self.cursor}}}')
            elif isinstance(frame, CaughtUp) and self.auto_ack and pending_ack:
                pending_ack = 0
                await ws.send(f'{{"type":"ack","seq":{frame.seq}}}')

    def _handle(self, frame: object) -> None:
        """One server frame, whichever transport brought it."""
        if isinstance(frame, _Msgs):
            for delivery in frame.items:
                self._deliver(delivery)
            if frame.items:
                self.cursor = frame.items[-1].seq
        elif isinstance(frame, MsgFrame):
            self.cursor = frame.seq
            self._deliver(Delivery(frame.seq, frame.message))
        elif isinstance(frame, SentFrame):
            entry = self._pending.pop(frame.client_id, None)
            if entry and not entry[1].done():
                entry[1].set_result(Sent(frame.client_id, frame.id, frame.conv, frame.ts))
        elif isinstance(frame, ErrorFrame):
            entry = self._pending.pop(frame.ref, None) if frame.ref else None
            request = self._requests.get(frame.ref) if frame.ref else None
            if entry and not entry[1].done():
                entry[1].set_exception(ApiError(0, frame.code, frame.message))
            elif request and not request.done():
                request.set_exception(ApiError(0, frame.code, frame.message))
            else:
                self.errors.append(frame)
        elif isinstance(frame, HistoryPage | Conversations | Receipts | PresenceList):
            request = self._requests.get(frame.ref)
            if request and not request.done():
                request.set_result(frame)
        elif isinstance(frame, CaughtUp):
            self.cursor = max(self.cursor or 0, frame.seq)
            self.caught_up.set()
        elif isinstance(frame, TypingEvent | ReceiptEvent | PresenceEvent):
            self._events.put_nowait(frame)

    async def _catch_up_from_history(self) -> None:
        """What the inbox no longer holds, from history: for each of my conversations, every
        message after the newest one I have (less a margin: a message can reach an inbox up to
        a few seconds after a newer one got its id), de-duplicated as usual."""
        convs = await self._http("GET", "/v1/conversations")
        for summary in convs:
            conv = summary["conv"]
            known = self.conversations.get(conv)
            after = (
                f"{max(known[-1].ts - HISTORY_OVERLAP_MS, 0):012x}" + "0" * 12
                if known
                else FIRST_ID
            )
            while True:
                page = await self._http(
                    "GET",
                    f"/v1/conversations/{conv}/messages",
                    params={"after": after, "limit": MAX_PAGE},
                )
                messages = msgspec.convert(page["messages"], list[ChatMessage])
                for message in messages:
                    self._deliver(Delivery(0, message))
                if len(messages) < MAX_PAGE:
                    break
                after = messages[-1].id

    def _deliver(self, delivery: Delivery) -> None:
        msg = delivery.message
        if msg.id in self._seen:
            return
        self._seen.add(msg.id)
        conv = self.conversations.setdefault(msg.conv, [])
        if not conv or conv[-1].id < msg.id:  # the usual case: newer than all it has
            conv.append(msg)
        else:
            bisect.insort(conv, msg, key=lambda m: m.id)
        self._inbox.put_nowait(delivery)
