"""How every HTTP answer of the Litestar app looks, whichever code produced it.

- An error is ``{"code": ..., "message": ...}`` with the status of ``frontends.errors.HTTP_STATUS``:
  a core :class:`ChatError`, one of Litestar's own (a body that is not JSON, a parameter of the
  wrong type, an unknown route), or any other exception (500 ``internal``, logged with a request
  id that the answer carries, so a user's report finds the traceback). Messages are plain words:
  ``cursor: expected an integer, got 'abc'``, never a repr of Litestar's internals.
- A JSON answer ends with a newline, so ``curl .../readyz`` followed by another command does not
  glue the two outputs together.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from litestar import Request, Response
from litestar.datastructures import MutableScopeHeaders, State
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Message, Scope

from core.errors import ChatError, ErrorCode
from core.protocol import validation_code
from frontends.errors import error_body, retry_after_header

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
"""On every 500 answer: the id its message names and the server log's line carries."""

_JSON = "application/json"


def chat_error_handler(request: Request[Any, Any, State], exc: ChatError) -> Response[bytes]:
    if exc.code is ErrorCode.INTERNAL:
        return internal_error_handler(request, exc)
    return _answer(exc, headers=retry_after_header(exc))


def http_error_handler(request: Request[Any, Any, State], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (a body that is not JSON, a bad parameter, an unknown route)."""
    if exc.status_code >= 500:
        return internal_error_handler(request, exc)
    if isinstance(exc, ValidationException):
        return _answer(_validation_error(request, exc))
    if exc.status_code == 400:
        detail = exc.detail.removeprefix("JSON is malformed: ")
        if detail != exc.detail:
            detail = f"the body is not valid JSON: {detail}"
        return _answer(ChatError(ErrorCode.MALFORMED, detail))
    if exc.status_code == 413:  # the app's request_max_body_size: HTTP_STATUS's code for 413
        return _answer(
            ChatError(
                ErrorCode.MESSAGE_TOO_LONG,
                "the body is larger than 4 x JETCHAT_MAX_MESSAGE_CHARS + 4096 bytes",
            )
        )
    code = {401: ErrorCode.UNAUTHORIZED, 404: ErrorCode.NOT_FOUND}.get(
        exc.status_code, ErrorCode.INVALID_ARGUMENT
    )
    # the status stays Litestar's (405 Method Not Allowed)
    return _answer(ChatError(code, exc.detail), exc.status_code)


def internal_error_handler(request: Request[Any, Any, State], exc: Exception) -> Response[bytes]:
    """A bug (or a backend error nothing turned into a ChatError): 500 with a request id that
    the log line with the traceback carries too."""
    request_id = secrets.token_hex(8)
    log.error(
        "internal error",
        extra={"request_id": request_id, "method": request.method, "path": request.url.path},
        exc_info=exc,
    )
    err = ChatError(ErrorCode.INTERNAL, f"internal error (request id {request_id})")
    return _answer(err, headers={REQUEST_ID_HEADER: request_id})


def _answer(
    err: ChatError, status: int | None = None, headers: dict[str, str] | None = None
) -> Response[bytes]:
    code_status, body = error_body(err)
    return Response(body, status_code=status or code_status, media_type=_JSON, headers=headers)


exception_handlers = {
    ChatError: chat_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}


# --- parameter and body errors in plain words -----------------------------------------------

_TYPES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "null": "null",
    "array": "a list",
    "object": "an object",
}
_EXPECTED_GOT = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")
_EXPECTED_CONSTRAINED = re.compile(r"Expected `([^`]+)` (.+)")
_MISSING_FIELD = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]+)`")
_MISSING_PARAMETER = re.compile(r"Missing required (\w+) parameter '([^']+)'")


def _validation_error(request: Request[Any, Any, State], exc: ValidationException) -> ChatError:
    """Litestar's ValidationException: its ``extra`` lists ``{message, key, source}`` with
    msgspec's messages; a missing parameter comes as the detail alone. Body problems are
    ``malformed`` (400: the JSON does not fit, as for a WebSocket frame), unless each is a
    value of the right type out of its field's shape (a pattern or length of
    core/identifiers.py), which is ``invalid_argument`` (422) as for a frame; parameter
    problems are ``invalid_argument``."""
    if not isinstance(exc.extra, list) or not exc.extra:
        if found := _MISSING_PARAMETER.match(exc.detail):
            kind, name = found.groups()
            return ChatError(ErrorCode.INVALID_ARGUMENT, f"{name}: missing ({kind} parameter)")
        return ChatError(ErrorCode.MALFORMED, exc.detail)
    parts, malformed = [], False
    for item in exc.extra:
        if not isinstance(item, dict):
            continue
        key, message = str(item.get("key", "")), str(item.get("message", ""))
        if item.get("source") == "body":
            malformed |= validation_code(message) is ErrorCode.MALFORMED
            parts.append(_body_problem(key, message))
        else:
            raw = request.query_params.get(key) if key else None
            parts.append(f"{key}: {_plain(message, raw, optional=True)}")
    return ChatError(
        ErrorCode.MALFORMED if malformed else ErrorCode.INVALID_ARGUMENT, "; ".join(parts)
    )


def _body_problem(key: str, message: str) -> str:
    whole = key == "data"  # Litestar's name for the body itself
    if found := _MISSING_FIELD.fullmatch(message):
        field = found.group(1)
        return f"{field if whole else f'{key}.{field}'}: missing"
    if found := _UNKNOWN_FIELD.fullmatch(message):
        field = found.group(1)
        return f"{field if whole else f'{key}.{field}'}: unknown field"
    if whole and not message.startswith("Expected"):
        return "the body is missing: send a JSON object"  # msgspec said "'data'" (a KeyError)
    return f"{'the body' if whole else key}: {_plain(message, None, optional=False)}"


def _plain(message: str, raw: str | None, *, optional: bool) -> str:
    """msgspec's "Expected `int | null`, got `str`" as "expected an integer, got 'abc'".
    ``optional``: a query parameter's null is its absence, not a value to ask for."""
    if found := _EXPECTED_GOT.fullmatch(message):
        expected, got = found.groups()
        shown = repr(raw[:40] + ("..." if len(raw) > 40 else "")) if raw is not None else None
        return f"expected {_type_words(expected, optional)}, got {shown or _type_words(got, False)}"
    if found := _EXPECTED_CONSTRAINED.fullmatch(message):
        expected, constraint = found.groups()
        return f"expected {_type_words(expected, optional)} {constraint.replace('`', '')}"
    return message.replace("`", "")


def _type_words(spec: str, optional: bool) -> str:
    names = [n.strip() for n in spec.split("|")]
    if optional and len(names) > 1:
        names = [n for n in names if n != "null"]
    return " or ".join(_TYPES.get(n, n) for n in names)


# --- JSON answers end with a newline ----------------------------------------------------------

_NEWLINE = "jetchat.json_newline"


async def end_json_with_newline(message: Message, scope: Scope) -> None:
    """A Litestar ``before_send`` hook: it sees every message of every answer (errors and
    not-found routes included, unlike route middleware), so this is the one place. A JSON
    answer with a body gets one more byte, counted in its Content-Length; streamed answers
    (no Content-Length) and empty bodies (204) are left alone."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        media_type = (headers.get("content-type") or "").partition(";")[0].strip()
        length = headers.get("content-length")
        if (media_type == _JSON or media_type.endswith("+json")) and length and int(length) > 0:
            headers["content-length"] = str(int(length) + 1)
            scope["state"][_NEWLINE] = True
    elif (
        message["type"] == "http.response.body"
        and not message.get("more_body", False)
        and scope["state"].get(_NEWLINE)
    ):
        message["body"] = message.get("body", b"") + b"\n"
