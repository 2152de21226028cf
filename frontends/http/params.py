"""Path and query parameters of the HTTP API, constrained by the patterns of
core/identifiers.py: the same shapes as frames' and bodies' fields, declared here because
Litestar checks (and documents in the OpenAPI document) a parameter's ``Parameter(pattern=)``
but ignores a ``msgspec.Meta`` on it. A value out of its shape is answered 422
``invalid_argument`` naming the parameter, before any handler runs."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

from core.identifiers import (
    CONVERSATION_PATTERN,
    DEVICE_ID_PATTERN,
    GROUP_ID_PATTERN,
    MESSAGE_ID_PATTERN,
    USER_ID_PATTERN,
    USER_LIST_PATTERN,
)

UserIdParam = Annotated[str, Parameter(pattern=USER_ID_PATTERN, description="A user id")]
DeviceIdParam = Annotated[str, Parameter(pattern=DEVICE_ID_PATTERN, description="A device id")]
GroupIdParam = Annotated[str, Parameter(pattern=GROUP_ID_PATTERN, description="A group id")]
ConversationParam = Annotated[
    str,
    Parameter(
        pattern=CONVERSATION_PATTERN,
        description="A conversation id: dm.<a>.<b> (user ids, sorted) or group.<group id>",
    ),
]
MessageIdParam = Annotated[
    str | None, Parameter(pattern=MESSAGE_ID_PATTERN, description="A message id")
]
UserListParam = Annotated[
    str,
    Parameter(pattern=USER_LIST_PATTERN, description="Comma-separated user ids (at most 500)"),
]
