"""The OpenAPI document (``/schema/openapi.json``) and Swagger UI at ``/schema``, offline.

Swagger UI's files come from the ``flask-swagger-ui`` wheel (its version is Swagger UI's; jetchat
never imports it, it only serves the wheel's ``dist`` folder) and are served by jetchat at
``/schema/assets/``: Litestar's pages load them from a CDN, which leaves a blank page on a
machine without internet. Redoc, RapiDoc, Stoplight Elements and Scalar are not offered (no
package ships their files), so ``/schema/redoc`` and the like answer 404.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from litestar import Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.static_files import create_static_files_router

PATH = "/schema"
ASSETS = "/assets"  # under PATH
_SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css")


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
            "`Authorization: Bearer <token>`. Messages arrive over the WebSocket `GET /v1/ws` "
            "(docs/protocol.md), or by long polling `GET /v1/poll` where WebSockets do not pass."
        ),
        path=PATH,
        render_plugins=[OfflineSwagger(swagger_ui_dist()), JsonRenderPlugin(), YamlRenderPlugin()],
    )
