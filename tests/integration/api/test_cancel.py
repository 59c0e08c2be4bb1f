"""POST /functions/v1/cancel and the links that lead to it: a batch or some jobs, their owner's
or an admin's; nobody else's; what is done stays done; the batch completes."""

from __future__ import annotations

from uuid import UUID

import pytest

from dispatcher.service import Service
from tests.integration.api.conftest import USER_A, USER_B, Api, ApiFactory, finish_job, job_ids
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory, events_of, jobs_of, wait_until

CANCEL = "/functions/v1/cancel"


async def states(database_url: str, batch_id: UUID) -> list[str]:
    return [job["status"] for job in await jobs_of(database_url, batch_id)]


async def test_the_answers_link_to_status_events_and_cancel_and_the_cancel_link_works(api: Api) -> None:
    async with api.client(api.token()) as client:
        accepted = await client.post(
            "/functions/v1/generate-images", json={"prompts": ["Troy", "Carthage", "Rome"], "wait": False}
        )
        assert accepted.status_code == 202
        links = accepted.json()
        batch_id = links["batch_id"]
        assert links["status_url"] == f"{api.url}/functions/v1/batch-status?batch_id={batch_id}"
        assert links["events_url"] == f"{api.url}/functions/v1/batch-events?batch_id={batch_id}"
        first, *_ = await job_ids(api.database_url, batch_id)
        await finish_job(api.database_url, first)
        status = (await client.get(links["status_url"])).json()
        assert status["cancel_url"] == links["cancel_url"]
        assert status["jobs"][1]["cancel_url"].endswith(
            f"/functions/v1/cancel?job_id={status['jobs'][1]['job_id']}"
        )
        one = await client.post(status["jobs"][1]["cancel_url"])
        assert one.json() == {"cancelled": 1}
        rest = await client.post(links["cancel_url"])
        assert rest.json() == {"cancelled": 1}
        again = await client.post(links["cancel_url"])
        assert again.json() == {"cancelled": 0}
    assert await states(api.database_url, UUID(batch_id)) == ["succeeded", "cancelled", "cancelled"]
    kinds = [kind for kind, _ in await events_of(api.database_url, UUID(batch_id))]
    assert kinds.count("cancelled") == 2
    assert kinds[-1] == "complete"


async def test_nobody_cancels_another_users_batch_or_jobs_but_an_admin_may(api: Api) -> None:
    theirs = await api.submit(["Hastings"], user_id=USER_B)
    (their_job,) = await job_ids(api.database_url, theirs)
    async with api.client(api.token(USER_A)) as client:
        by_batch = await client.post(CANCEL, json={"batch_id": str(theirs)})
        by_job = await client.post(CANCEL, json={"job_ids": [str(their_job)]})
        mixed = await client.post(CANCEL, json={"job_ids": [str(their_job)], "batch_id": str(theirs)})
    assert (by_batch.status_code, by_job.status_code, mixed.status_code) == (403, 403, 403)
    assert f"job {their_job} is not yours" in by_job.json()["error"]
    assert await states(api.database_url, theirs) == ["queued"]
    async with api.client(api.keys.service_role_key) as admin:
        assert (await admin.post(CANCEL, json={"batch_id": str(theirs)})).json() == {"cancelled": 1}
    assert await states(api.database_url, theirs) == ["cancelled"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "give batch_id or job_ids"),
        ({"batch_id": "nope"}, 400, "batch_id: 'nope' is not a UUID"),
        ({"job_ids": []}, 400, "job_ids: must be a list of 1 to 1000 job ids"),
        ({"job_ids": "x"}, 400, "job_ids: must be a list"),
        ({"job_ids": [None]}, 400, "job_ids: a job id is null"),
        ({"batch_id": "00000000-0000-4000-8000-000000000999"}, 404, "not found"),
        ({"job_ids": ["00000000-0000-4000-8000-000000000999"]}, 404, "not found"),
    ],
)
async def test_a_bad_cancel_is_a_4xx_naming_the_problem(
    api: Api, body: dict[str, object], status: int, message: str
) -> None:
    async with api.client(api.token()) as client:
        response = await client.post(CANCEL, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


async def test_anon_key_callers_cannot_cancel(api: Api) -> None:
    batch = await api.submit(["Marathon"])
    async with api.client(api.keys.anon_key) as client:
        response = await client.post(CANCEL, json={"batch_id": str(batch)})
    assert response.status_code == 403
    assert await states(api.database_url, batch) == ["queued"]


async def test_cancelling_a_running_job_cancels_its_runpod_job(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=1, seconds="30")
    async with start_api() as api, dispatcher(lease_seconds=2) as service:
        batch = await api.submit(["The fall of Constantinople"])
        await wait_until(lambda: _has_running(service))
        (run,) = service.dispatcher.active.values()
        runpod_id = run.runpod_job_id
        async with api.client(api.token()) as client:
            assert (await client.post(CANCEL, json={"batch_id": str(batch)})).json() == {"cancelled": 1}
        await wait_until(lambda: _cancelled_at_runpod(cloud, runpod_id), timeout_s=10)
    assert await states(api.database_url, batch) == ["cancelled"]


async def _has_running(service: Service) -> bool:
    return any(run.runpod_job_id for run in service.dispatcher.active.values())


async def _cancelled_at_runpod(cloud: Cloud, runpod_id: str | None) -> bool:
    job = cloud.platform.jobs.get(runpod_id or "")
    return job is not None and job.status == "CANCELLED"
