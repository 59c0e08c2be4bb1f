"""The page in headless Chromium: submit prompts and watch them arrive, cancel, history a page at a
time, every state a tile shows, the viewer, retry, the admins' view, a phone and a dark theme."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.api.conftest import USER_A, USER_B, ApiFactory, finish_job, job_ids
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory, wait_until

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


SCREENSHOTS = Path(os.environ.get("ZIMAGE_TEST_OUTPUT", "test-output")) / "screenshots"


async def test_history_states_viewer_retry_admin_view_and_screenshots(start_api: ApiFactory) -> None:
    """History a page at a time, every state a tile shows, the viewer, a user's retry and the
    admins' view; screenshots (light, dark, a phone) in test-output/screenshots."""
    from playwright.async_api import async_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with start_api(rate_limit_burst=100) as api, async_playwright() as playwright:
        older = [await api.submit([f"an older scene {n}"]) for n in range(11)]
        for batch in older:
            for job in await job_ids(api.database_url, batch):
                await finish_job(api.database_url, job)
        mixed = await api.submit(["the Parthenon", "a refused scene", "the Colossus", "still waiting"])
        done, refused, cancelled, _waiting = await job_ids(api.database_url, mixed)
        await finish_job(api.database_url, done)
        await finish_job(api.database_url, refused, error="the prompt was refused by the worker")
        async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
            await conn.execute("select cancel_image_jobs(null, %s, null)", ([cancelled],))
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.goto(f"{api.url}/#token={api.token()}")
            first = page.locator(f"article.batch[data-batch-id='{mixed}']")
            await first.wait_for(timeout=10_000)
            await page.locator("#more").wait_for(timeout=10_000)  # shown once the page is loaded
            assert await page.locator("article.batch").count() == 10  # one page of history
            assert await first.locator("[data-state=failed] .failed").inner_text() == (
                "the prompt was refused by the worker"
            )
            assert await first.locator("[data-state=cancelled]").count() == 1
            assert "in the queue" in await first.locator("[data-state=queued]").inner_text()
            await page.screenshot(path=SCREENSHOTS / "history-light.png", full_page=True)
            await page.click("#more")
            await page.locator("article.batch").nth(11).wait_for(timeout=10_000)
            assert await page.locator("article.batch").count() == 12
            assert await page.locator("#more").is_hidden()

            await first.locator("img.result").click()
            viewer = page.locator("dialog#viewer")
            await viewer.wait_for(state="visible")
            assert (
                await viewer.locator("a[download]").get_attribute("href") == f"https://images.test/{done}.png"
            )
            await viewer.locator("button.close").click()

            await first.locator("button.retry").click()
            async with await psycopg.AsyncConnection.connect(api.database_url) as conn:

                async def requeued() -> bool:
                    row = await (
                        await conn.execute("select status from image_jobs where id = %s", (refused,))
                    ).fetchone()
                    return row is not None and row[0] == "queued"

                await wait_until(requeued, timeout_s=10)
            assert await page.locator("#admin").is_hidden(), "a user sees no admin view"

            await page.emulate_media(color_scheme="dark")
            await page.screenshot(path=SCREENSHOTS / "history-dark.png", full_page=True)
            phone = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            await phone.goto(f"{api.url}/#token={api.token()}")
            await phone.locator("article.batch").first.wait_for(timeout=10_000)
            await phone.screenshot(path=SCREENSHOTS / "phone.png")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, "nothing wider than a phone's screen"

            await finish_job(api.database_url, refused, error="refused again")
            admin = await browser.new_page(viewport={"width": 1100, "height": 900})
            await admin.goto(f"{api.url}/#token={api.keys.service_role_key}")
            row = admin.locator(f"#admin tr[data-job-id='{refused}']")
            await row.wait_for(timeout=10_000)
            assert "refused again" in await row.inner_text()
            await admin.screenshot(path=SCREENSHOTS / "admin.png", full_page=True)
            await row.locator("button.retry-job").click()
            await row.wait_for(state="detached", timeout=10_000)
        finally:
            await browser.close()
    for name in ("history-light", "history-dark", "phone", "admin"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000


async def test_the_character_picker_lists_what_the_user_may_use_and_the_batch_takes_the_choice(
    start_api: ApiFactory,
) -> None:
    from playwright.async_api import async_playwright

    async with start_api() as api, async_playwright() as playwright:
        async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
            for name, owner, shared in (
                ("Napoleon", USER_A, False),
                ("Josephine", USER_B, True),
                ("Nelson", USER_B, False),
            ):
                await conn.execute(
                    "insert into characters (owner_id, name, trigger_phrase, adapter_path, adapter_sha256,"
                    " adapter_bytes, shared) values (%s, %s, %s, %s, %s, 1000, %s)",
                    (
                        owner,
                        name,
                        f"{name.lower()}_zit",
                        f"{owner}/{name}",
                        hashlib.sha256(name.encode()).hexdigest(),
                        shared,
                    ),
                )
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{api.url}/#token={api.token()}")
            picker = page.locator("#character option")
            await wait_until(lambda: _count(picker, 3))
            assert await picker.all_inner_texts() == ["none", "Josephine (shared)", "Napoleon"]
            await page.select_option("#character", label="Napoleon")
            await page.fill("#prompts", "at Austerlitz")
            await page.click("button[type=submit]")
            await page.locator("article.batch").first.wait_for(timeout=10_000)
        finally:
            await browser.close()
        async with await psycopg.AsyncConnection.connect(api.database_url) as conn:
            row = await (
                await conn.execute(
                    "select j.prompt, c.name from image_jobs j join characters c on c.id = j.character_id"
                )
            ).fetchone()
    assert row == ("napoleon_zit, at Austerlitz", "Napoleon")


async def _count(locator: Any, expected: int) -> bool:
    return bool(await locator.count() == expected)
