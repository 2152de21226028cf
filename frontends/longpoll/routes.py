"""The long-polling frontend: ``GET /v1/poll?cursor=N&timeout=S``, for clients behind proxies
that do not let WebSockets through. Requests (sends, history, read marks, receipts, typing,
presence) go over plain HTTP (frontends/http), through the same handlers a WebSocket's frames
reach (core/requests.py).

A thin adapter: each poll is one :class:`core.session.DeviceSession` (through
:class:`core.session.LongPolls`) writing to a :class:`PollTransport`, whose frames become the
answer; every rule of delivery is the core's."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec

from core.errors import ErrorCode
from core.model import Device
from core.protocol import PollFrame
from core.session import PollTransport
from frontends.context import frontend_context
from frontends.http.openapi import raises
from frontends.http.routes import provide_device


class PollAnswer(msgspec.Struct, frozen=True):
    """What a poll answers (documentation only: the answer is spliced from frames already
    encoded, see :func:`poll`)."""

    cursor: int
    frames: list[PollFrame]


@get(
    "/v1/poll",
    summary="Long poll: inbox messages and events after a cursor",
    description=(
        "Answers at once when the inbox holds messages after `cursor`, else when one arrives "
        "or an event (typing, receipt, presence) does, else after `timeout` seconds (capped "
        "by the server, 25 by default) with no frames. The body is `{cursor, frames}`: the "
        "frames are the WebSocket protocol's server frames (docs/protocol.md); poll again with "
        "the returned cursor, which also acknowledges what you received (a negative one is "
        "refused with `invalid_argument`, as over the WebSocket). No `cursor`: the "
        "position this device acknowledged last. A pending poll is the presence heartbeat. "
        "`protocol=2`: the messages come in `msgs` frames (several per frame). The token may "
        "come as `token=` in the query (the only HTTP route that takes it there); a poll of a "
        "device revoked, or whose token expires, while it waits answers 401 at once."
    ),
    dependencies={"device": Provide(provide_device)},
    tags=["long polling"],
    media_type="application/json",
    opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.RATE_LIMITED),
    responses={
        200: ResponseSpec(
            PollAnswer, description="The frames and the next cursor", generate_examples=False
        )
    },
)
async def poll(
    request: Request[object, object, State],
    device: Device,
    cursor: int | None = None,
    timeout: float | None = None,
    protocol: int = 1,
) -> Response[bytes]:
    context = frontend_context(request.app.state)
    longpolls, cap = context.longpolls, context.poll_timeout_s
    wait = cap if timeout is None else max(0.0, min(timeout, cap))
    transport = PollTransport()
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # a task of this poll, not supervised: it is cancelled when the poll answers
    watcher = asyncio.ensure_future(_until_disconnected(request, gone))
    try:
        next_cursor = await longpolls.poll(device, cursor, wait, transport, gone, protocol)
    finally:
        watcher.cancel()
    body = f'{{"cursor":{next_cursor},"frames":[{",".join(transport.frames)}]}}'
    return Response(body.encode(), media_type="application/json")


async def _until_disconnected(
    request: Request[object, object, State], gone: asyncio.Future[None]
) -> None:
    """Resolve ``gone`` when the client closes its connection (a phone changing networks, a
    closed tab): its poll then ends at once instead of holding a subscription until the
    timeout with nobody to answer."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the (empty) body of the GET
    if not gone.done():
        gone.set_result(None)
