"""The OpenAPI document is true: the running server's real answers match it (schemathesis), and
its Swagger UI at /schema works without internet (real Chromium, every request outside
127.0.0.1 refused)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from helpers import PASSWORD
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jetchat_client import sign_up

CHECKS = [
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    not_a_server_error,
]
# 20 examples per operation and mode: about 1,100 requests in all (28 operations). Derandomized,
# so a run sends the same requests every time (what the server answers differs only in its ids).
EXAMPLES = 20


async def test_real_answers_match_the_document(spawn):
    # polls end at once: a poll with no news would otherwise be held for its timeout
    server = spawn(poll_timeout_s="0.05")
    base = server.base_url
    user = "schemathesis"
    await sign_up(base, user, PASSWORD)

    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")

    @schema.auth().skip_for(method="POST", path=["/v1/accounts", "/v1/sessions"])
    class Bearer:
        """A real token of a signed-up user. A logout (DELETE /v1/sessions/current) revokes
        it: the 401 that follows makes schemathesis log in again and replay the request."""

        def get(self, case, context):
            login = {"username": user, "password": PASSWORD, "device_name": "schemathesis"}
            return httpx.post(f"{base}/v1/sessions", json=login).json()["token"]

        def set(self, case, token, context):
            case.headers = {**(case.headers or {}), "authorization": f"Bearer {token}"}

    failures: list[str] = []
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                case.call_and_validate(base_url=base, checks=CHECKS)

            try:
                check()
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    elapsed = time.monotonic() - started
    print(f"{len(operations)} operations checked in {elapsed:.1f}s")
    assert not failures, "\n\n".join(failures)
    # every refusal was a documented answer, none a bug with a logged traceback
    assert "Traceback" not in server.log_path.read_text(), server.log_tail()


def test_the_document_says_what_errors_look_like(server):
    doc = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    send = doc["paths"]["/v1/messages"]["post"]
    assert send["security"] == [{"bearer": []}]
    error = send["responses"]["404"]["content"]["application/json"]["schema"]
    assert error["required"] == ["code", "message"]
    assert sorted(error["properties"]["code"]["enum"]) == ["not_found", "unknown_recipient"]
    assert {"400", "401", "403", "404", "413", "422", "500", "503"} <= set(send["responses"])
    assert "x-request-id" in send["responses"]["500"]["headers"]
    sign_up_op = doc["paths"]["/v1/accounts"]["post"]
    assert "security" not in sign_up_op and "401" not in sign_up_op["responses"]
    poll = doc["paths"]["/v1/poll"]["get"]["responses"]["200"]["content"]["application/json"]
    assert poll["schema"] == {"$ref": "#/components/schemas/PollAnswer"}
    frames = doc["components"]["schemas"]["PollAnswer"]["properties"]["frames"]["items"]
    kinds = {ref["$ref"].rsplit("/", 1)[1] for ref in frames["oneOf"]}
    assert {"MsgFrame", "MsgsFrame", "ResyncNeeded", "TypingEvent"} <= kinds
    assert doc["components"]["schemas"]["MsgFrame"]["properties"]["type"]["const"] == "msg"
    # Litestar's own guess at errors ({status_code, detail, extra}) is gone everywhere
    assert "status_code" not in str(doc["paths"])


CHROMIUM = shutil.which("chromium")


async def test_swagger_ui_works_offline(server, tmp_path: Path):
    from playwright.async_api import async_playwright

    if CHROMIUM is None:
        pytest.fail("chromium is missing: ops/test installs Debian's (never a downloaded one)")

    outside: list[str] = []

    async def only_local(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = await browser.new_page()
            await page.route("**/*", only_local)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{server.base_url}/schema")
            send = page.locator("#operations-messages-V1MessagesSend")
            await send.wait_for(timeout=20_000)
            assert await send.locator(".opblock-summary-method").inner_text() == "POST"
            assert "/v1/messages" in await send.locator(".opblock-summary-path").inner_text()
            assert await page.locator(".opblock").count() >= 25
            await page.screenshot(path=tmp_path / "schema.png", full_page=True)
        finally:
            await browser.close()
    assert outside == [], f"requests left 127.0.0.1: {outside}"
    assert errors == []
    assert (tmp_path / "schema.png").stat().st_size > 0
