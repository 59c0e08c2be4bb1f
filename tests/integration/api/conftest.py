"""The HTTP app on a loopback port, against a real Postgres; the dispatcher's state machine is
driven through its own SQL functions, or by a real dispatcher with the stand-ins where a test
needs the whole path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from api.app import build_app, running_api
from api.context import FunctionContext
from api.settings import ApiSettings
from devstack import jobs as devstack_jobs
from devstack.keys import LocalKeys
from devstack.servers import LoopbackServer
from devstack.stack import supabase_app
from tests.integration.dispatcher.conftest import USER_A, USER_B, cloud, dispatcher  # noqa: F401 (fixtures)

__all__ = ["USER_A", "USER_B"]


@dataclass
class Api:
    url: str
    keys: LocalKeys
    context: FunctionContext
    database_url: str

    def token(self, user_id: str = USER_A, **claims: Any) -> str:
        return self.keys.user_token(user_id, **claims)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=20)

    async def submit(self, prompts: list[str], user_id: str = USER_A, **body: Any) -> UUID:
        async with self.client(self.token(user_id)) as client:
            response = await client.post(
                "/functions/v1/generate-images", json={"prompts": prompts, "wait": False, **body}
            )
        assert response.status_code == 202, response.text
        return UUID(response.json()["batch_id"])


ApiFactory = Callable[..., AbstractAsyncContextManager[Api]]


@pytest.fixture
async def users(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for user in (USER_A, USER_B):
            await conn.execute("insert into auth.users (id) values (%s)", (user,))


@pytest.fixture
def start_api(database_url: str, users: None) -> ApiFactory:
    """``async with start_api(**settings) as api:`` serves the app (and a JWKS endpoint) on loopback."""

    @asynccontextmanager
    async def start(extras: Any = None, **overrides: Any) -> AsyncIterator[Api]:
        keys = LocalKeys()
        auth_server = await LoopbackServer(supabase_app(keys), "auth").start()  # its JWKS
        settings = ApiSettings.model_validate(
            {
                "database_url": database_url,
                "supabase_url": auth_server.url,
                "supabase_service_role_key": keys.service_role_key,
                "supabase_anon_key": keys.anon_key,
                "supabase_jwt_secret": keys.jwt_secret,
                **overrides,
            }
        )
        try:
            async with running_api(settings) as context:
                server = await LoopbackServer(build_app(context, extras), "api").start()
                await context.broker.listener.connected.wait()
                try:
                    yield Api(server.url, keys, context, database_url)
                finally:
                    context.broker.close()
                    await server.stop()
        finally:
            await auth_server.stop()

    return start


@pytest.fixture
async def api(start_api: ApiFactory) -> AsyncIterator[Api]:
    async with start_api() as running:
        yield running


@dataclass
class SseEvent:
    id: str | None
    data: dict[str, Any]


async def read_events(
    response: httpx.Response, stop: Callable[[SseEvent], bool] = lambda event: False
) -> list[SseEvent]:
    """Parse an event stream until it ends or ``stop`` says so (that event included)."""
    events: list[SseEvent] = []
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                events.append(SseEvent(fields.get("id"), json.loads(fields["data"])))
                if stop(events[-1]):
                    return events
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


async def job_ids(database_url: str, batch_id: UUID) -> list[UUID]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (
            await conn.execute("select id from image_jobs where batch_id = %s order by position", (batch_id,))
        ).fetchall()
    return [row[0] for row in rows]


async def finish_job(database_url: str, job_id: UUID, error: str | None = None) -> None:
    """Succeed the job (or fail it permanently with ``error``) as the dispatcher would."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await devstack_jobs.finish_job(conn, job_id, error)
