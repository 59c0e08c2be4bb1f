"""``zimage demo``: the whole pipeline on this machine, through the real path.

The local stack (Postgres with the shim and migrations, the RunPod stand-in with
real workers on the tiny offline Z-Image pipeline, or synthetic ones, the Storage
stand-in) and a dispatcher start; a batch is inserted exactly as the frontend
inserts it (as a signed-in user, through RLS); its progress events are printed as
they arrive; the stored PNGs are listed at the end. Everything stops on exit.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from devstack.frontend import insert_batch_as_user
from devstack.stack import Devstack, DevstackConfig
from dispatcher.service import running_service
from dispatcher.settings import DispatcherSettings

DEMO_USER = "00000000-0000-4000-8000-000000000001"
DEFAULT_PROMPTS = [
    "The signing of the Magna Carta at Runnymede, 1215, oil painting",
    "Roman legionaries building Hadrian's Wall, misty morning",
    "Apollo 11 lunar module on the Moon, 1969, photograph",
]


def run_demo(prompts: list[str], synthetic: bool = False, data_dir: Path | None = None) -> int:
    return asyncio.run(_demo(prompts or DEFAULT_PROMPTS, synthetic, data_dir))


async def _demo(prompts: list[str], synthetic: bool, data_dir: Path | None) -> int:
    say("Starting the local stack (Postgres, RunPod and Storage stand-ins, workers)...")
    stack = Devstack(DevstackConfig(synthetic=synthetic, workers=2, execution_time="1", data_dir=data_dir))
    try:
        await stack.start()
        say(describe(stack))
        async with running_service(dispatcher_settings(stack)):
            batch_id = await insert_batch_as_user(stack.database_url, DEMO_USER, prompts)
            say(f"Inserted batch {batch_id} as the demo user, as the frontend does; following its events:")
            complete = await follow(stack.database_url, batch_id)
        images = list(complete["images"])
        say(f"Done: {len(images)} of {complete['total']} images stored, {complete['failed']} failed.")
        for path in sorted((stack.storage.root / "generated-assets").rglob("*.png")):
            say(f"  {path}")
        for url in images:
            say(f"  {url} (served until the demo stops)")
        return 0 if complete["failed"] == 0 else 1
    finally:
        await stack.stop()
        say(f"Stopped everything; the PNGs stay under {stack.storage.root}.")


def describe(stack: Devstack) -> str:
    if stack.config.synthetic:
        return "Workers: synthetic (a load generator returning flat PNGs; no model)."
    return (
        f"Workers: the real worker under the runpod SDK, on {stack.model_id} (unless MODEL_ID names real "
        "weights, that is the tiny offline Z-Image pipeline with random weights: its images are noise)."
    )


def dispatcher_settings(stack: Devstack) -> DispatcherSettings:
    environment = {name.lower(): value for name, value in stack.environment().items()}
    return DispatcherSettings.model_validate({**environment, "sweep_interval_seconds": 1})


async def follow(database_url: str, batch_id: UUID) -> dict[str, Any]:
    """Print the batch's events as they are recorded; return the final 'complete' payload."""
    last_id = 0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("listen image_job_events")
        while True:
            rows = await (
                await conn.execute(
                    "select id, kind, payload from image_job_events"
                    " where batch_id = %s and id > %s order by id",
                    (batch_id, last_id),
                )
            ).fetchall()
            for event_id, kind, payload in rows:
                last_id = event_id
                if kind == "progress":
                    say(f"  {payload['message']}")
                elif kind in {"image", "failed", "retrying"}:
                    detail = payload.get("url") or payload.get("error")
                    say(f"  {kind}: image {payload['position'] + 1} {detail}")
                elif kind == "complete":
                    complete: dict[str, Any] = payload
                    return complete
            async for _ in conn.notifies(timeout=1.0, stop_after=1):
                pass


def say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
