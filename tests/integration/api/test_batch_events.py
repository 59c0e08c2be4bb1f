"""batch-events: replay then live, exact resume after Last-Event-ID, one stream for many batches,
only one's own work, and one LISTEN for every subscriber."""

from __future__ import annotations

import asyncio
from datetime import datetime
from uuid import UUID, uuid4

import httpx
import psycopg

from api.broker import APPLICATION_NAME
from tests.integration.api.conftest import (
    USER_A,
    USER_B,
    Api,
    ApiFactory,
    SseEvent,
    finish_job,
    job_ids,
    read_events,
)
from tests.integration.dispatcher.conftest import wait_until

PROMPTS = ["The coronation of Charlemagne", "The Battle of Hastings", "Gutenberg's press"]


async def finished_batch(api: Api, failures: int = 0) -> UUID:
    batch_id = await api.submit(PROMPTS)
    for index, job_id in enumerate(await job_ids(api.database_url, batch_id)):
        await finish_job(api.database_url, job_id, error="prompt refused" if index < failures else None)
    return batch_id


async def stream(api: Api, batch_id: UUID | None = None, last_event_id: str | None = None) -> list[SseEvent]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    params = {"batch_id": str(batch_id)} if batch_id else {}
    async with (
        api.client(api.token()) as client,
        client.stream("GET", "/functions/v1/batch-events", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        return await read_events(response)


async def test_a_late_subscriber_gets_the_whole_batch_in_order_and_the_stream_ends(api: Api) -> None:
    batch_id = await finished_batch(api, failures=1)
    events = await stream(api, batch_id)
    types = [event.data["type"] for event in events]
    assert types == ["progress", "failed", "progress", "image", "progress", "image", "progress", "complete"]
    assert [event.id for event in events] == [str(n) for n in range(1, 9)]
    assert events[0].data["message"] == "Creating 3 image jobs..."
    assert events[-2].data["message"] == "3/3 images done"
    assert events[1].data | {"job_id": None} == {
        "type": "failed",
        "batch_id": str(batch_id),
        "job_id": None,
        "position": 0,
        "error": "prompt refused",
        "attempts": 1,
    }
    complete = events[-1].data
    assert complete["success"] is True
    assert complete["total"] == 3
    assert complete["failed"] == 1
    assert complete["images"] == [e.data["url"] for e in events if e.data["type"] == "image"]


async def test_last_event_id_resumes_exactly_after_the_last_event_seen(api: Api) -> None:
    batch_id = await finished_batch(api)
    everything = await stream(api, batch_id)
    for seen in range(1, len(everything)):
        resumed = await stream(api, batch_id, last_event_id=everything[seen - 1].id)
        assert resumed == everything[seen:]


async def test_an_eventsource_reconnects_with_a_fresh_token_in_its_url_and_resumes(api: Api) -> None:
    """EventSource cannot set headers: the token rides in ?access_token= and expires. The page
    (and any client) reconnects with a fresh one and ?lastEventId= the last id it saw."""
    batch_id = await finished_batch(api)
    url = "/functions/v1/batch-events"
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as client:
        expired = api.keys.user_token(USER_A, ttl_s=-60)
        refused = await client.get(url, params={"batch_id": str(batch_id), "access_token": expired})
        assert refused.status_code == 401
        params = {"batch_id": str(batch_id), "access_token": api.token(), "lastEventId": "3"}
        async with client.stream("GET", url, params=params) as response:
            assert response.status_code == 200
            resumed = await read_events(response)
    assert [event.id for event in resumed] == [str(n) for n in range(4, 9)]
    assert resumed[-1].data["type"] == "complete"


async def test_a_reconnect_after_the_end_is_told_to_stop(api: Api) -> None:
    batch_id = await finished_batch(api)
    last = (await stream(api, batch_id))[-1]
    async with api.client(api.token()) as client:
        response = await client.get(
            "/functions/v1/batch-events",
            params={"batch_id": str(batch_id)},
            headers={"Last-Event-ID": last.id or ""},
        )
    assert response.status_code == 204  # EventSource stops reconnecting on 204


async def test_live_events_follow_the_replay_with_no_gap_and_no_duplicate(api: Api) -> None:
    batch_id = await api.submit(PROMPTS)
    jobs = await job_ids(api.database_url, batch_id)
    await finish_job(api.database_url, jobs[0])  # before anyone listens: replayed
    subscribers = [asyncio.create_task(stream(api, batch_id)) for _ in range(5)]
    await wait_until(lambda: _subscribed(api, 5))
    finishing = [finish_job(api.database_url, job_id) for job_id in jobs[1:]]  # concurrently
    await asyncio.gather(*finishing)
    results = await asyncio.wait_for(asyncio.gather(*subscribers), timeout=10)
    reference = await stream(api, batch_id)
    for events in results:
        assert events == reference
        assert [int(e.id or 0) for e in events] == list(range(1, len(events) + 1))


async def _subscribed(api: Api, count: int) -> bool:
    return len(api.context.broker.subscriptions()) >= count


async def test_another_users_batch_is_forbidden_and_an_unknown_one_not_found(api: Api) -> None:
    batch_id = await api.submit(PROMPTS)
    async with api.client(api.token(USER_B)) as client:
        forbidden = await client.get("/functions/v1/batch-events", params={"batch_id": str(batch_id)})
        missing = await client.get("/functions/v1/batch-events", params={"batch_id": str(uuid4())})
        malformed = await client.get("/functions/v1/batch-events", params={"batch_id": "42"})
        resume = await client.get(
            "/functions/v1/batch-events",
            params={"batch_id": str(batch_id)},
            headers={"Last-Event-ID": f"{batch_id}:-1"},
        )
    assert (forbidden.status_code, forbidden.json()["error"]) == (403, f"batch {batch_id} is not yours")
    assert missing.status_code == 404
    assert malformed.status_code == 400
    assert "batch_id" in malformed.json()["error"]
    assert resume.status_code == 400
    assert "Last-Event-ID" in resume.json()["error"]


async def test_one_stream_follows_all_of_a_users_batches_and_only_theirs(api: Api) -> None:
    first = await api.submit(PROMPTS[:1])
    async with (
        api.client(api.token()) as client,
        client.stream("GET", "/functions/v1/batch-events") as response,
    ):
        assert response.status_code == 200
        pending = {first}
        reading = asyncio.create_task(read_events(response, stop=lambda e: _completes(e, pending)))
        await wait_until(lambda: _subscribed(api, 1))
        second = await api.submit(PROMPTS[1:])  # created after the stream opened
        pending.add(second)
        await api.submit(PROMPTS, user_id=USER_B)  # someone else's
        await wait_until(lambda: _followed(api, 2))
        for batch_id in (first, second):
            for job_id in await job_ids(api.database_url, batch_id):
                await finish_job(api.database_url, job_id)
        events = await asyncio.wait_for(reading, timeout=10)
    assert {e.data["batch_id"] for e in events} == {str(first), str(second)}
    assert sum(e.data["type"] == "image" for e in events) == 3


def _completes(event: SseEvent, batch_ids: set[UUID]) -> bool:
    if event.data["type"] == "complete":
        batch_ids.discard(UUID(event.data["batch_id"]))
    return not batch_ids


async def _followed(api: Api, count: int) -> bool:
    return sum(len(s.logs) for s in api.context.broker.feeds) >= count


async def test_a_requeued_batch_comes_back_to_life_on_the_users_stream(api: Api) -> None:
    batch_id = await finished_batch(api, failures=1)
    async with (
        api.client(api.token()) as client,
        client.stream("GET", "/functions/v1/batch-events") as response,
    ):
        revived = lambda e: e.data["type"] == "complete" and e.data["failed"] == 0  # noqa: E731
        reading = asyncio.create_task(read_events(response, stop=revived))
        await wait_until(lambda: _subscribed(api, 1))
        async with api.client(api.keys.service_role_key) as admin:
            answer = await admin.post("/functions/v1/retry-failed", json={"batch_id": str(batch_id)})
        assert answer.json() == {"requeued": 1}
        failed_job = (await job_ids(api.database_url, batch_id))[0]
        await finish_job(api.database_url, failed_job)
        events = await asyncio.wait_for(reading, timeout=10)
    # The feed takes the batch up when it comes back: its story from the start, then the revival.
    types = [e.data["type"] for e in events]
    assert types[types.index("complete") + 1 :] == ["requeued", "progress", "image", "progress", "complete"]
    assert events[-1].data["failed"] == 0
    assert len(events[-1].data["images"]) == 3


async def test_subscribers_share_two_database_connections_and_a_disconnect_frees_everything(
    api: Api, database_url: str
) -> None:
    batch_id = await api.submit(PROMPTS)
    clients = [api.client(api.token()) for _ in range(40)]
    streams = [
        client.stream("GET", "/functions/v1/batch-events", params={"batch_id": str(batch_id)})
        for client in clients
    ]
    responses = [await s.__aenter__() for s in streams]
    assert all(r.status_code == 200 for r in responses)
    await wait_until(lambda: _subscribed(api, 40))
    assert await _fan_out_connections(database_url) == 2
    for s in streams:
        await s.__aexit__(None, None, None)
    for client in clients:
        await client.aclose()
    await wait_until(lambda: _none_left(api))
    assert api.context.broker.logs == {}


async def _none_left(api: Api) -> bool:
    return not api.context.broker.subscriptions()


async def _fan_out_connections(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(
                "select count(*) from pg_stat_activity"
                " where datname = current_database() and application_name = %s",
                (APPLICATION_NAME,),
            )
        ).fetchone()
    return int(row[0]) if row else 0


async def test_one_stream_for_several_named_batches_resumes_each_where_it_was(api: Api) -> None:
    first, second = await finished_batch(api), await finished_batch(api)
    async with api.client(api.token()) as client:
        params = {"batch_id": [str(first), str(second)]}
        async with client.stream("GET", "/functions/v1/batch-events", params=params) as response:
            everything = await read_events(response)
        assert [e.data["type"] for e in everything].count("complete") == 2
        middle = len(everything) // 2 + 1  # into the second batch
        async with client.stream(
            "GET",
            "/functions/v1/batch-events",
            params=params,
            headers={"Last-Event-ID": everything[middle].id or ""},
        ) as response:
            resumed = await read_events(response)
    assert [e.data for e in resumed] == [e.data for e in everything[middle + 1 :]]


async def test_a_quiet_stream_sends_keep_alive_comments(start_api: ApiFactory) -> None:
    async with start_api(sse_ping_seconds=0.2) as api:
        batch_id = await api.submit(PROMPTS)  # nobody finishes it: the stream stays quiet
        async with (
            api.client(api.token()) as client,
            client.stream(
                "GET", "/functions/v1/batch-events", params={"batch_id": str(batch_id)}
            ) as response,
        ):
            comments = 0
            async for line in response.aiter_lines():
                comments += line.startswith(":")
                if comments == 2:
                    break
    assert comments == 2


async def test_a_stream_of_an_unfinished_batch_gets_estimates_without_ids(start_api: ApiFactory) -> None:
    async with start_api(estimate_interval_seconds=0.2) as api:
        earlier = await api.submit(["a finished scene"])
        (done,) = await job_ids(api.database_url, earlier)
        await finish_job(api.database_url, done)
        async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
            await conn.execute(
                "update image_jobs set timings = '{\"execution_ms\": 3000}' where id = %s", (done,)
            )
            await conn.execute(
                "insert into image_dispatchers (dispatcher_id, workers, in_flight) values ('d', 2, 0)"
            )
        batch_id = await api.submit(PROMPTS)
        async with (
            api.client(api.token()) as client,
            client.stream(
                "GET", "/functions/v1/batch-events", params={"batch_id": str(batch_id)}
            ) as response,
        ):
            events = await read_events(response, stop=lambda event: event.data["type"] == "estimate")
    estimate = events[-1]
    assert estimate.id is None, "an estimate is not stored: a reconnect resumes after the last real event"
    assert [e.data["type"] for e in events[:-1]] == ["progress"]
    assert [job["queue_position"] for job in estimate.data["jobs"]] == [1, 2, 3]
    starts = [datetime.fromisoformat(job["estimated_start_at"]) for job in estimate.data["jobs"]]
    # two idle workers take the first two at once; the third waits for a finish, one every 3 s / 2
    assert starts[0] == starts[1]
    assert (starts[2] - starts[0]).total_seconds() == 1.5
    assert estimate.data["estimated_completion_at"] == estimate.data["jobs"][2]["estimated_finish_at"]
