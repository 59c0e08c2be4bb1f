"""generate-images, batch-status and retry-failed: every bad body gets a 4xx naming the field,
callers are rate-limited, the batch belongs to its caller, and browsers may call from elsewhere."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import psycopg
import pytest

from tests.integration.api.conftest import USER_A, USER_B, Api, ApiFactory, finish_job, job_ids

GENERATE = "/functions/v1/generate-images"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "prompts: a non-empty list"),
        ({"prompts": "one prompt"}, "prompts: a non-empty list"),
        ({"prompts": ["a", {"prompt": "b"}]}, "prompts: all strings, or all"),
        ({"prompts": [{"index": 0}]}, "prompts[0].prompt: must be a string"),
        ({"prompts": ["ok", "  "]}, "prompts[1]: prompt is empty or blank"),
        ({"prompts": ["x" * 1001]}, "prompts[0]: prompt is 1001 characters long"),
        ({"prompts": ["a"] * 101}, "prompts: at most 100 prompts per batch, got 101"),
        ({"prompts": ["a"], "quality": "ultra"}, 'quality: must be "basic" or "high"'),
        ({"prompts": ["a"], "quality": 9}, "quality: must be a string"),
        ({"prompts": ["a"], "aspectRatio": "4:3"}, 'aspectRatio: must be "16:9", "1:1" or "9:16"'),
        ({"prompts": ["a"], "seed": "7"}, "seed: must be an integer"),
        ({"prompts": ["a"], "seed": -1}, "seed: must be between 0 and 4294967295"),
        ({"prompts": ["a"], "projectId": 12}, "projectId: must be a string"),
        ({"prompts": ["a"], "format": "gif"}, 'format: must be "png", "webp" or "jpeg", got \'gif\''),
        ({"prompts": ["a"], "format": ["png"]}, "format: must be a string"),
        ({"prompts": ["a"], "output_quality": 80}, "output_quality: applies to webp and jpeg only"),
        ({"prompts": ["a"], "format": "jpeg", "output_quality": 0}, "output_quality: must be between 1"),
        ({"prompts": ["a"], "format": "jpeg", "output_quality": 2**40}, "output_quality: out of range"),
        ({"prompts": ["a"], "format": "webp", "output_quality": "high"}, "output_quality: must be an"),
        ({"prompts": ["a"], "webhook": "http://example.com/h"}, "webhook: must be https"),
        ({"prompts": ["a"], "webhook": "ftp://example.com/h"}, "webhook: must be an https URL"),
        ({"prompts": ["a"], "webhook": "https://u:p@example.com/h"}, "webhook: must not carry credentials"),
        ({"prompts": ["a"], "webhook": "https://10.0.0.8/h"}, "webhook: 10.0.0.8 is a private address"),
        ({"prompts": ["a"], "webhook": "https://[::1]/h"}, "webhook: ::1 is a loopback address"),
        (
            {"prompts": ["a"], "webhook": "https://169.254.169.254/"},
            "webhook: 169.254.169.254 is a link-local",
        ),
        ({"prompts": ["a"], "webhook": "https://example.com:x/"}, "webhook: not a URL"),
        ({"prompts": ["a"], "webhook": 5}, "webhook: must be a string"),
        (
            {"prompts": ["a"], "webhook": "https://e.com", "webhook_events": ["done"]},
            "webhook_events: 'done' is",
        ),
        ({"prompts": ["a"], "webhook": "https://e.com", "webhook_events": []}, "webhook_events: a non-empty"),
        ({"prompts": ["a"], "webhook_events": ["image"]}, "webhook_events: give a webhook"),
    ],
)
async def test_bad_bodies_get_400_naming_the_field_and_insert_nothing(
    api: Api, body: dict[str, Any], message: str
) -> None:
    async with api.client(api.token()) as client:
        response = await client.post(GENERATE, json=body)
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert message in response.json()["error"]
    assert await _batches(api.database_url) == 0


async def test_a_lossy_format_is_taken_and_shown_with_its_default_quality(api: Api) -> None:
    async with api.client(api.token()) as client:
        accepted = await client.post(GENERATE, json={"prompts": ["a"], "format": "webp", "wait": False})
        assert accepted.status_code == 202, accepted.text
        status = await client.get(accepted.json()["status_url"])
    assert (status.json()["format"], status.json()["output_quality"]) == ("webp", 90)
    assert status.json()["jobs"][0]["job_id"]


async def test_a_webhook_is_taken_and_batch_status_reports_its_deliveries(api: Api) -> None:
    body = {
        "prompts": ["a"],
        "webhook": "https://hooks.example.com/x",
        "webhook_events": ["complete", "image"],
    }
    async with api.client(api.token()) as client:
        accepted = await client.post(GENERATE, json={**body, "wait": False})
        assert accepted.status_code == 202, accepted.text
        status = (await client.get(accepted.json()["status_url"])).json()
    assert status["webhook"] == {
        "url": "https://hooks.example.com/x",
        "events": ["image", "complete"],
        "deliveries": {"pending": 0, "delivered": 0, "failed": 0},
        "last_attempt": None,
        "next_attempt_at": None,
    }


async def test_replicas_share_one_limit_and_memory_buckets_do_not(start_api: ApiFactory) -> None:
    body = {"prompts": ["A comet over Bayeux"], "wait": False}

    async def codes(store: str) -> list[int]:
        limits = {"rate_limit_burst": 2, "rate_limit_per_minute": 1, "rate_limit_store": store}
        answers = []
        async with start_api(**limits) as one, start_api(**limits) as two:
            for api in (one, two, one, two):  # a load balancer's round robin
                async with api.client(api.token(USER_B if store == "memory" else USER_A)) as client:
                    answers.append((await client.post(GENERATE, json=body)).status_code)
        return answers

    assert await codes("postgres") == [202, 202, 429, 429]
    assert await codes("memory") == [202, 202, 202, 202]  # each replica lets 2 through


async def test_batch_status_estimates_starts_and_finishes_from_live_capacity_and_recorded_times(
    api: Api,
) -> None:
    earlier = await api.submit(["a finished scene"])
    (done,) = await job_ids(api.database_url, earlier)
    await finish_job(api.database_url, done)
    batch = await api.submit(["one", "two", "three"])

    async def status() -> dict[str, Any]:
        async with api.client(api.token()) as client:
            answer = await client.get("/functions/v1/batch-status", params={"batch_id": str(batch)})
        return dict(answer.json())

    unknown = await status()
    assert unknown["estimated_completion_at"] is None  # no dispatcher has said what it runs
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        await conn.execute(
            "update image_jobs set timings = '{\"execution_ms\": 2000}' where id = %s", (done,)
        )
        await conn.execute(
            "insert into image_dispatchers (dispatcher_id, workers, in_flight) values ('d1', 1, 1)"
        )
    known = await status()
    starts = [datetime.fromisoformat(job["estimated_start_at"]) for job in known["jobs"]]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(starts)] == [2.0, 2.0]
    finishes = [datetime.fromisoformat(job["estimated_finish_at"]) for job in known["jobs"]]
    assert datetime.fromisoformat(known["estimated_completion_at"]) == finishes[-1]
    assert [job["queue_position"] for job in known["jobs"]] == [1, 2, 3]


async def test_waiting_for_a_long_batch_ends_in_202_with_the_links_before_any_proxy_cuts_it(
    start_api: ApiFactory,
) -> None:
    async with start_api(wait_limit_seconds=0.5) as api, api.client(api.token()) as client:
        answer = await client.post(GENERATE, json={"prompts": ["a siege that lasts"]})  # no dispatcher runs
        assert answer.status_code == 202, answer.text
        assert set(answer.json()) == {"batch_id", "status_url", "events_url", "cancel_url"}
        status = await client.get(answer.json()["status_url"])
    assert status.json()["counts"] == {"queued": 1}


async def test_a_body_that_is_not_json_is_refused(api: Api) -> None:
    async with api.client(api.token()) as client:
        response = await client.post(GENERATE, content=b"prompts=a")
    assert (response.status_code, response.json()["error"]) == (
        400,
        "the body must be JSON (UTF-8, no NaN or Infinity)",
    )


async def test_each_user_is_rate_limited_on_their_own(start_api: ApiFactory) -> None:
    async with start_api(rate_limit_burst=2, rate_limit_per_minute=1) as api:
        codes = []
        for user in (USER_A, USER_A, USER_A, USER_B):
            async with api.client(api.token(user)) as client:
                response = await client.post(
                    GENERATE, json={"prompts": ["A comet over Bayeux"], "wait": False}
                )
            codes.append(response.status_code)
        assert codes == [202, 202, 429, 202]
        assert int(response.headers.get("retry-after", 0)) == 0  # USER_B's answer
    async with (
        start_api(rate_limit_burst=1, rate_limit_per_minute=1) as api,
        api.client(api.token()) as client,
    ):
        await client.post(GENERATE, json={"prompts": ["A comet"], "wait": False})
        limited = await client.post(GENERATE, json={"prompts": ["A comet"], "wait": False})
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"].startswith("too many requests")


async def test_the_batch_is_the_callers_and_its_status_shows_queue_positions(api: Api) -> None:
    earlier = await api.submit(["Queued first"], user_id=USER_B)
    batch_id = await api.submit(["The Wright Flyer", "The Hindenburg", "Sputnik"], projectId="doc-7")
    first, *_ = await job_ids(api.database_url, batch_id)
    await finish_job(api.database_url, first)
    async with api.client(api.token()) as client:
        response = await client.get("/functions/v1/batch-status", params={"batch_id": str(batch_id)})
        other = await client.get("/functions/v1/batch-status", params={"batch_id": str(earlier)})
    status = response.json()
    assert status["user_id"] == USER_A
    assert status["projectId"] == "doc-7"
    assert status["counts"] == {"succeeded": 1, "queued": 2}
    assert status["done"] is False
    assert [(j["status"], j["queue_position"]) for j in status["jobs"]] == [
        ("succeeded", None),
        ("queued", 2),  # behind USER_B's job
        ("queued", 3),
    ]
    assert status["jobs"][0]["url"] == f"https://images.test/{first}.png"
    assert other.status_code == 403


async def test_retry_failed_checks_its_filters(api: Api) -> None:
    async with api.client(api.keys.service_role_key) as client:
        for body, message in [
            ({}, "give batch_id, job_ids or failed_since"),
            ({"batch_id": "nope"}, "batch_id: 'nope' is not valid"),
            ({"job_ids": []}, "job_ids: must be a non-empty list of job ids"),
            ({"failed_since": "2026-11-24T10:00:00"}, "failed_since: include a time zone"),
        ]:
            response = await client.post("/functions/v1/retry-failed", json=body)
            assert response.status_code == 400
            assert message in response.json()["error"]
        response = await client.post(
            "/functions/v1/retry-failed", json={"failed_since": "2026-01-01T00:00:00Z"}
        )
    assert response.json() == {"requeued": 0}


async def test_browsers_may_call_from_the_frontends_origin(start_api: ApiFactory) -> None:
    preflight = {
        "Origin": "https://historygen.app",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-client-info, apikey, content-type",
    }
    async with start_api() as api, api.client() as client:
        response = await client.options(GENERATE, headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        allowed = response.headers["access-control-allow-headers"].lower()
        assert {"authorization", "x-client-info", "apikey", "content-type"} <= set(allowed.split(", "))
    async with start_api(cors_allowed_origins="https://historygen.app") as api, api.client() as client:
        allowed_origin = await client.options(GENERATE, headers=preflight)
        other_origin = await client.options(GENERATE, headers={**preflight, "Origin": "https://evil.example"})
    assert allowed_origin.headers["access-control-allow-origin"] == "https://historygen.app"
    assert other_origin.status_code == 400


async def test_supabase_js_headers_pass_the_preflight_and_a_429s_retry_after_is_readable(
    start_api: ApiFactory,
) -> None:
    preflight = {
        "Origin": "https://historygen.app",
        "Access-Control-Request-Method": "POST",
        # what functions.invoke sends, with a region chosen
        "Access-Control-Request-Headers": "authorization, apikey, x-client-info, content-type, x-region",
    }
    async with (
        start_api(rate_limit_burst=1, rate_limit_per_minute=1) as api,
        api.client(api.token()) as client,
    ):
        assert (await client.options(GENERATE, headers=preflight)).status_code == 200
        origin = {"Origin": "https://historygen.app"}
        await client.post(GENERATE, json={"prompts": ["a"], "wait": False}, headers=origin)
        limited = await client.post(GENERATE, json={"prompts": ["a"], "wait": False}, headers=origin)
    assert limited.status_code == 429
    assert "retry-after" in limited.headers["access-control-expose-headers"].lower()


async def _batches(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (await conn.execute("select count(*) from image_batches")).fetchone()
    return int(row[0]) if row else 0


async def test_batches_lists_a_users_own_newest_first_a_page_at_a_time(api: Api) -> None:
    mine = [await api.submit([f"scene {n}"]) for n in range(5)]
    await api.submit(["someone else's"], user_id=USER_B)
    seen: list[str] = []
    async with api.client(api.token()) as client:
        cursor: str | None = None
        while True:
            params = {"limit": "2", **({"before": cursor} if cursor else {})}
            page = (await client.get("/functions/v1/batches", params=params)).json()
            seen += [batch["batch_id"] for batch in page["batches"]]
            assert all(batch["total"] == 1 and batch["counts"] == {"queued": 1} for batch in page["batches"])
            if (cursor := page["next"]) is None:
                break
        bad = await client.get("/functions/v1/batches", params={"before": "garbage"})
    assert seen == [str(batch) for batch in reversed(mine)]
    assert (bad.status_code, bad.json()["error"]) == (400, "before: not a cursor this server gave")


async def test_failed_jobs_are_listed_for_admins_only(api: Api) -> None:
    batch = await api.submit(["doomed"], user_id=USER_B)
    (job,) = await job_ids(api.database_url, batch)
    await finish_job(api.database_url, job, error="the worker refused it")
    async with api.client(api.keys.service_role_key) as admin:
        listed = (await admin.get("/functions/v1/failed-jobs")).json()
    async with api.client(api.token()) as user:
        refused = await user.get("/functions/v1/failed-jobs")
    assert [(j["job_id"], j["error"], j["user_id"]) for j in listed["jobs"]] == [
        (str(job), "the worker refused it", USER_B)
    ]
    assert refused.status_code == 403
