"""``zimage demo``: the whole pipeline on this machine, through the real path.

The local stack starts (Postgres with the shim and migrations, the RunPod stand-in with real
workers on the tiny offline Z-Image pipeline, or on MODEL_ID's weights, or synthetic workers;
the Storage stand-in), then the app and the dispatcher in this process. The prompts go in as
the frontend sends them: POST generate-images with a signed-in user's token, then its SSE
stream, drawn as a progress bar. At the end: where the PNGs are, their URLs, and the progress
page's address. With ``keep`` everything stays up until Ctrl-C; nothing is left behind either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from api.client import ApiError, ProgressBar, submit
from api.settings import ApiSettings
from devstack.servers import LoopbackServer
from devstack.stack import Devstack, DevstackConfig
from dispatcher.settings import DispatcherSettings
from zimage.processes import running_app

DEMO_USER = "00000000-0000-4000-8000-000000000001"  # supabase/seed.sql
DEFAULT_PROMPTS = [
    "The signing of the Magna Carta at Runnymede, 1215, oil painting",
    "Roman legionaries building Hadrian's Wall, misty morning",
    "Apollo 11 lunar module on the Moon, 1969, photograph",
]


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    model_id: str | None = None  # real weights (a Hub id or a directory) for the real workers


def run_demo(
    prompts: list[str],
    synthetic: bool = False,
    data_dir: Path | None = None,
    keep: bool = False,
    port: int = 0,
) -> int:
    return asyncio.run(_demo(prompts or DEFAULT_PROMPTS, synthetic, data_dir, keep, port))


async def _demo(prompts: list[str], synthetic: bool, data_dir: Path | None, keep: bool, port: int) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    model_id = DemoSettings().model_id
    say("Starting the local stack (Postgres, the RunPod and Storage stand-ins, workers)...")
    config = DevstackConfig(
        synthetic=synthetic, workers=2, execution_time="1", data_dir=data_dir, model_id=model_id
    )
    stack = Devstack(config)
    try:
        await stack.start()
        say(f"Workers: {stack.describe_workers()}.")
        environment = {name.lower(): value for name, value in stack.environment().items()}
        api_settings = ApiSettings.model_validate(environment)
        dispatcher_settings = DispatcherSettings.model_validate({**environment, "sweep_interval_seconds": 1})
        async with running_app(api_settings, dispatcher_settings) as running:
            server = await LoopbackServer(running.app, "app", port=port).start()
            token = stack.keys.user_token(DEMO_USER, ttl_s=24 * 3600)
            say(f"The app serves {server.url}; submitting {len(prompts)} prompts as the demo user would:")
            try:
                complete = await submit(server.url, token, {"prompts": prompts}, ProgressBar("demo"))
            except ApiError as error:
                say(f"The app refused the batch: {error}")
                return 1
            report(stack, complete)
            page = f"{server.url}/#token={token}"
            if keep:
                say(f"Still running. Open {page} to generate more; Ctrl-C stops everything.")
                await _until_interrupted(stopping)
            else:
                say(f"The progress page was {page} (run with --keep to use it).")
            running.context.broker.close()
            await server.stop()
        return 0 if complete["failed"] == 0 else 1
    finally:
        await stack.stop()
        say(f"Stopped everything; the PNGs stay under {stack.storage.root}.")


async def _until_interrupted(stopping: asyncio.Event) -> None:
    # Ctrl-C: asyncio.run cancels this task; the cleanup after it runs all the same.
    with contextlib.suppress(asyncio.CancelledError):
        await stopping.wait()


def report(stack: Devstack, complete: dict[str, Any]) -> None:
    say(f"Done: {len(complete['images'])} of {complete['total']} images stored, {complete['failed']} failed.")
    for path in sorted((stack.storage.root / "generated-assets").rglob("*.png")):
        say(f"  {path}")
    for url in complete["images"]:
        say(f"  {url}")


def say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
