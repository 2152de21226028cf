"""Every JSON request body passes here before it is decoded: its nesting is bounded.

Litestar decodes a JSON body once, in ``Request.json()`` (its body extractor calls it for every
msgspec ``Struct`` parameter; no route of ours reads the body another way), so a request class
that checks the raw bytes there sees every body first. The check is the WebSocket frames' own
(:func:`core.protocol.check_json_depth`): a 2 KB body nesting 1,000 arrays used to make every
JSON route answer 500 (RecursionError in the decoder); it is now 400 ``malformed``. The size of
a body is bounded by the app's ``request_max_body_size`` (413 ``message_too_long``, see
:mod:`frontends.http.answers`).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.types import Empty

from core.protocol import check_json_depth


class JsonRequest(Request[Any, Any, State]):
    """Litestar's request, with the depth of its JSON body checked before it is decoded."""

    async def json(self) -> Any:
        if self._json is Empty and self._connection_state.json is Empty:
            check_json_depth(await self.body())  # ChatError(MALFORMED): 400
        return await super().json()
