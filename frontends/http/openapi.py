"""The OpenAPI document (``/schema/openapi.json``) and Swagger UI at ``/schema``, offline.

Swagger UI's files come from the ``flask-swagger-ui`` wheel (its version is Swagger UI's; jetchat
never imports it, it only serves the wheel's ``dist`` folder) and are served by jetchat at
``/schema/assets/``: Litestar's pages load them from a CDN, which leaves a blank page on a
machine without internet. Redoc, RapiDoc, Stoplight Elements and Scalar are not offered (no
package ships their files), so ``/schema/redoc`` and the like answer 404.

Litestar documents each operation's success answer from its types. Errors are documented here,
for every operation at once, from what the route is, so the document cannot drift from
``frontends/errors.py``:

- every operation: 500 ``internal`` (with its ``x-request-id`` header), 503 ``unavailable``;
- a route that takes the caller's device: the ``bearer`` security scheme, 401 ``unauthorized``;
- a request body: 400 ``malformed``; query or path parameters (path parameters all have a
  pattern): 422 ``invalid_argument``;
- whatever its use case may answer besides, which the route says with ``opt=raises(...)``.

Each error answer's schema is ``{code, message}`` with ``code`` one of the codes of that status
for that operation. Litestar's own guess (every error a 400 with ``{status_code, detail,
extra}``) is dropped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from litestar import Litestar, Router
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router

from core.errors import ErrorCode
from frontends.errors import HTTP_STATUS
from frontends.http.answers import REQUEST_ID_HEADER

PATH = "/schema"
ASSETS = "/assets"  # under PATH
BEARER = "bearer"
DEVICE = "device"
"""The dependency of every route that needs a logged-in device (``provide_device``)."""
_ERRORS = "errors"
_SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css")


def raises(*codes: ErrorCode) -> dict[str, Any]:
    """A route's ``opt``: the error codes its use case may answer, beyond those every route of
    its kind answers (see the module's docstring)."""
    return {_ERRORS: codes}


def swagger_ui_dist() -> Path:
    """The folder of Swagger UI's files in the installed ``flask-swagger-ui`` wheel, found
    without importing the package (which imports Flask). Checked when the app is built."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("flask-swagger-ui is not installed: /schema needs its Swagger UI files")
    dist = Path(next(iter(spec.submodule_search_locations))) / "dist"
    missing = [name for name in _SWAGGER_FILES if not (dist / name).is_file()]
    if missing:
        raise RuntimeError(f"flask-swagger-ui ships no {missing} in {dist}")
    return dist


class OfflineSwagger(SwaggerRenderPlugin):
    """Litestar's Swagger UI page, its files served by this app (and no CDN favicon)."""

    def __init__(self, dist: Path) -> None:
        assets = PATH + ASSETS
        super().__init__(
            js_url=f"{assets}/swagger-ui-bundle.js",
            css_url=f"{assets}/swagger-ui.css",
            standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
            path="/swagger",
            favicon="",
        )
        self._dist = dist

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(
            create_static_files_router(
                ASSETS, [self._dist], include_in_schema=False, name="swagger_ui_assets"
            )
        )


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version=version,
        description=(
            "jetchat's HTTP API. Errors are `{code, message}` (codes: docs/protocol.md, "
            "'Error codes'); a 500 answer names a request id, also in its `x-request-id` "
            "header and in the server log. Log in with `POST /v1/sessions` and send its token as "
            "`Authorization: Bearer <token>`; a `token` query parameter is ignored, except on "
            "`GET /v1/poll` (and the WebSocket upgrade), where a browser may have no other way. "
            "Messages arrive over the WebSocket `GET /v1/ws` "
            "(docs/protocol.md), or by long polling `GET /v1/poll` where WebSockets do not pass."
        ),
        path=PATH,
        render_plugins=[OfflineSwagger(swagger_ui_dist()), JsonRenderPlugin(), YamlRenderPlugin()],
        components=Components(
            security_schemes={
                BEARER: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A device's token, from `POST /v1/sessions` (log in)",
                )
            }
        ),
    )


def document_errors(app: Litestar) -> None:
    """Rewrite every operation's error answers and security (see the module's docstring).
    Call once the app has all its routes: the document is built then, and kept."""
    schema = app.openapi_schema
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or schema.paths is None:
            continue
        item = schema.paths.get(route.path_format)
        for method, (handler, _) in route.route_handler_map.items():
            operation = getattr(item, method.lower(), None) if item is not None else None
            if isinstance(operation, Operation) and handler.resolve_include_in_schema():
                _document(operation, handler)


def _document(operation: Operation, handler: HTTPRouteHandler) -> None:
    codes = {ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE, *handler.opt.get(_ERRORS, ())}
    if DEVICE in handler.resolve_dependencies():
        codes.add(ErrorCode.UNAUTHORIZED)
        operation.security = [{BEARER: []}]
    if operation.request_body is not None:
        codes.add(ErrorCode.MALFORMED)
    parameters = operation.parameters or []
    if any(isinstance(p, Parameter) and p.param_in in ("query", "path") for p in parameters):
        codes.add(ErrorCode.INVALID_ARGUMENT)
    by_status: dict[int, list[ErrorCode]] = {}
    for code in sorted(codes):
        by_status.setdefault(HTTP_STATUS[code], []).append(code)
    responses = {k: v for k, v in (operation.responses or {}).items() if int(k) < 400}
    for status, group in sorted(by_status.items()):
        responses[str(status)] = _error_response(status, group)
    operation.responses = responses


def _error_response(status: int, codes: Iterable[ErrorCode]) -> OpenAPIResponse:
    names = [c.value for c in codes]
    headers: dict[str, Any] | None = None
    if status == 429:
        headers = {
            "retry-after": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.INTEGER),
                required=False,
                description="`rate_limited`: seconds before a retry may succeed",
            )
        }
    if status == 500:
        headers = {
            REQUEST_ID_HEADER: OpenAPIHeader(
                schema=Schema(type=OpenAPIType.STRING),
                required=True,
                description="The request id the message names, for finding the server's log",
            )
        }
    return OpenAPIResponse(
        description=f"{HTTPStatus(status).phrase}: " + ", ".join(f"`{n}`" for n in names),
        headers=headers,
        content={
            "application/json": OpenAPIMediaType(
                schema=Schema(
                    type=OpenAPIType.OBJECT,
                    required=["code", "message"],
                    properties={
                        "code": Schema(type=OpenAPIType.STRING, enum=names),
                        "message": Schema(type=OpenAPIType.STRING),
                    },
                    additional_properties=False,
                )
            )
        },
    )
