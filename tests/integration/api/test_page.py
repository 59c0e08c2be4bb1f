"""The progress page in headless Chromium: submit prompts, watch the bar reach N/N, see N images."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.api.conftest import ApiFactory
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")


async def test_the_page_submits_a_batch_and_shows_its_images_as_they_arrive(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    from playwright.async_api import async_playwright

    cloud.add_workers(count=3, seconds="0.2")
    prompts = ["The Great Wall of China", "The Terracotta Army", "The Forbidden City"]
    async with start_api() as api, dispatcher(), async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{api.url}/#token={api.token()}")
            await page.fill("#prompts", "\n".join(prompts))
            await page.select_option("#aspect", "1:1")
            await page.click("button[type=submit]")
            batch = page.locator("article.batch[data-complete=true]")
            await batch.wait_for(timeout=20_000)
            assert await batch.locator(".count").inner_text() == "3/3"
            assert await batch.locator("progress").evaluate("bar => bar.value") == 3
            images = batch.locator("img.result")
            assert await images.count() == 3
            sizes = await images.evaluate_all(
                "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            assert sizes == [[True, 1024, 1024]] * 3
            assert "token=" not in page.url  # the token left the address bar
        finally:
            await browser.close()


async def test_the_cancel_button_cancels_the_batch_and_the_tiles_say_so(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    from playwright.async_api import async_playwright

    cloud.add_workers(count=1, seconds="30")  # nothing finishes before the click
    async with start_api() as api, dispatcher(), async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{api.url}/#token={api.token()}")
            await page.fill("#prompts", "The Battle of Tours\nThe Battle of Lepanto")
            await page.click("button[type=submit]")
            await page.locator("article.batch button.cancel").click()
            batch = page.locator("article.batch[data-complete=true]")
            await batch.wait_for(timeout=20_000)
            assert await batch.locator(".cancelled").count() == 2
            assert await batch.locator("button.cancel").count() == 0
            assert "0 images, 2 failed" in await batch.locator(".message").inner_text()
        finally:
            await browser.close()
