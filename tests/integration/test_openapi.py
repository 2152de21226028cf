"""The OpenAPI document's Swagger UI at /schema works without internet (real Chromium, every
request outside 127.0.0.1 refused)."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

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
