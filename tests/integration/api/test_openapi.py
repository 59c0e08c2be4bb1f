"""The OpenAPI document at /functions/v1/openapi.json, and schemathesis (from PyPI) running
every operation it documents against the running app, with a dispatcher and synthetic workers
behind it: no 5xx, and every answer's status, content type and body as documented."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import httpx

from tests.integration.api.conftest import ApiFactory
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"


async def test_the_document_is_openapi_3_1_and_names_every_function(start_api: ApiFactory) -> None:
    async with start_api() as api, httpx.AsyncClient(base_url=api.url) as client:
        document = (await client.get("/functions/v1/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        f"/functions/v1/{name}"
        for name in (
            "batch-events",
            "batch-status",
            "batches",
            "cancel",
            "characters",
            "failed-jobs",
            "generate-images",
            "retry-failed",
        )
    }
    body = document["paths"]["/functions/v1/generate-images"]["post"]["requestBody"]
    properties = body["content"]["application/json"]["schema"]["properties"]
    assert properties["quality"]["enum"] == ["basic", "high"]
    assert properties["format"]["enum"] == ["png", "webp", "jpeg"]


async def schemathesis(url: str, token: str, *options: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        "run",
        url,
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        "--request-timeout",
        "30",
        "--generation-deterministic",
        "--no-color",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


async def test_every_documented_operation_answers_as_documented(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=4, seconds="0.01")
    async with (
        start_api(rate_limit_burst=1_000_000, wait_limit_seconds=2) as api,
        dispatcher(max_in_flight_per_user=64),
    ):
        url = f"{api.url}/functions/v1/openapi.json"
        # a user, for everything but the event stream (dedicated tests follow it: an open stream
        # has no end for a generic client to wait for); the service-role key, for what admins see and do
        code, output = await schemathesis(
            url, api.token(), "--max-examples", "30", "--exclude-path", "/functions/v1/batch-events"
        )
        assert code == 0, output[-6000:]
        code, output = await schemathesis(
            url,
            api.keys.service_role_key,
            "--max-examples",
            "30",
            "--include-path-regex",
            "retry-failed|failed-jobs|batches$",
            "--phases",
            "examples,coverage,fuzzing",
        )
        assert code == 0, output[-6000:]
