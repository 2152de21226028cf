"""What the frontends are given by the wiring (jetchat/app.py), in one typed object: the core's
use cases, this process's long polls, the WebSocket settings and the supervisor. Frontends
read it through :func:`frontend_context`, never by looking names up in Litestar's untyped
``State``."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.datastructures import State

from core.chat import Chat
from core.session import LongPolls
from core.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class FrontendContext:
    chat: Chat
    longpolls: LongPolls
    supervisor: Supervisor
    """Runs the WebSocket frontend's one keepalive task."""
    poll_timeout_s: float
    """Longest a long poll is held."""
    allowed_origins: frozenset[str]
    """Browser Origins allowed to open a WebSocket; ``*`` for any."""

    def origin_allowed(self, origin: str | None) -> bool:
        """Non-browser clients send no Origin. Browsers always do: only listed ones pass."""
        return origin is None or "*" in self.allowed_origins or origin in self.allowed_origins


_KEY = "frontend_context"


def install(state: State, context: FrontendContext) -> None:
    state[_KEY] = context


def frontend_context(state: State) -> FrontendContext:
    context = state.get(_KEY)
    if not isinstance(context, FrontendContext):
        raise RuntimeError("the frontends are used before jetchat/app.py installed their context")
    return context
