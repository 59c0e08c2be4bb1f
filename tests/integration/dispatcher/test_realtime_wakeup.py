"""Supabase Realtime as the dispatcher's wake-up source, through the Realtime stand-in: it wakes
the claim loop, and when Realtime goes away the sweep still gets every job done until the
dispatcher has subscribed again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from devstack.realtime import RealtimeStandIn
from devstack.servers import LoopbackServer
from devstack.stack import supabase_app
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory, insert_batch, wait_for_batch


@pytest.fixture
async def supabase(cloud: Cloud, database_url: str) -> AsyncIterator[tuple[str, RealtimeStandIn]]:
    """Storage and Realtime under one SUPABASE_URL, as on Supabase."""
    standin = RealtimeStandIn(cloud.keys)
    await standin.start(database_url)
    app = supabase_app(cloud.keys, cloud.storage, standin)
    server = await LoopbackServer(app, "supabase", websockets=True).start()
    yield server.url, standin
    await standin.stop()
    await server.stop()


async def test_realtime_wakes_the_dispatcher(
    supabase: tuple[str, RealtimeStandIn], cloud: Cloud, dispatcher: DispatcherFactory, database_url: str
) -> None:
    url, _ = supabase
    cloud.add_workers(count=2)
    # A sweep far slower than the deadline below: only a wake-up can finish the batch in time.
    async with dispatcher(wakeup_source="realtime", supabase_url=url, sweep_interval_seconds=60) as service:
        await asyncio.wait_for(service.wakeups["realtime"].wait(), 10)
        assert list(service.wakeups) == ["realtime"]  # what /healthz reports
        batch_id = await insert_batch(database_url, ["The Hanging Gardens", "The Lighthouse of Alexandria"])
        complete = await wait_for_batch(database_url, batch_id, timeout_s=10)
    assert complete["failed"] == 0
    assert len(complete["images"]) == 2


async def test_jobs_inserted_while_realtime_is_down_are_done_and_it_resubscribes(
    supabase: tuple[str, RealtimeStandIn], cloud: Cloud, dispatcher: DispatcherFactory, database_url: str
) -> None:
    url, realtime = supabase
    cloud.add_workers(count=2)
    async with dispatcher(wakeup_source="realtime", supabase_url=url, sweep_interval_seconds=1) as service:
        await asyncio.wait_for(service.wakeups["realtime"].wait(), 10)
        await realtime.stop()  # Realtime restarts: sockets closed, new ones refused
        while_down = await insert_batch(database_url, ["The Library of Alexandria"])
        assert (await wait_for_batch(database_url, while_down, timeout_s=15))["failed"] == 0
        assert not service.wakeups["realtime"].is_set()

        await realtime.start(database_url)
        await asyncio.wait_for(service.wakeups["realtime"].wait(), 15)
        after = await insert_batch(database_url, ["The Colossus of Rhodes"])
        assert (await wait_for_batch(database_url, after, timeout_s=15))["failed"] == 0
