"""Outbound webhooks: signed as Standard Webhooks say (verified with the standardwebhooks
package), from an outbox written with the events, at least once, in order per batch, retried,
shared by replicas, and never sent where the address checks refuse, whatever the name."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.servers import LoopbackServer
from tests.integration.dispatcher.conftest import (
    Cloud,
    DispatcherFactory,
    insert_batch,
    wait_for_batch,
    wait_until,
)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Receiver:
    """A webhook receiver: what it got, and what it answers (a list of statuses, then 200)."""

    server: LoopbackServer | None = None
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    redirected_to: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/hooks"

    async def hook(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        status = self.answers.pop(0) if self.answers else 200
        if status == 302:
            return Response(status_code=302, headers={"location": "/elsewhere"})
        return JSONResponse({}, status_code=status)

    async def elsewhere(self, request: Request) -> Response:
        self.redirected_to.append(str(request.url))
        return JSONResponse({})

    def events(self) -> list[dict[str, Any]]:
        """The bodies, each verified with the package (it raises on a bad signature)."""
        verifier = Webhook(SECRET)
        return [json.loads(json.dumps(verifier.verify(body, headers))) for headers, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = Starlette(
        routes=[
            Route("/hooks", receiver.hook, methods=["POST"]),
            Route("/elsewhere", receiver.elsewhere, methods=["GET", "POST"]),
        ]
    )
    receiver.server = await LoopbackServer(app, "receiver").start()
    yield receiver
    await receiver.server.stop()


def outbound(**overrides: Any) -> dict[str, Any]:
    return {
        "outbound_webhook_secret": SECRET,
        "outbound_webhook_allowed_hosts": ["127.0.0.1"],
        "outbound_webhook_retry_base_seconds": 0.1,
        "outbound_webhook_retry_max_seconds": 0.4,
        **overrides,
    }


async def deliveries(database_url: str, batch_id: UUID) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cursor.execute(
            "select * from image_webhook_deliveries where batch_id = %s order by id", (batch_id,)
        )
        return await cursor.fetchall()


async def settled(database_url: str, batch_id: UUID, count: int) -> None:
    async def done() -> bool:
        rows = await deliveries(database_url, batch_id)
        return len(rows) == count and all(row["status"] != "pending" for row in rows)

    await wait_until(done, timeout_s=20)


async def test_each_event_asked_for_arrives_signed_once_and_in_order(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, receiver: Receiver
) -> None:
    cloud.add_workers(count=3)
    async with dispatcher(**outbound()):
        batch = await insert_batch(
            database_url,
            [f"the Silk Road, stage {n}" for n in range(3)],
            webhook=receiver.url,
            webhook_events=["image", "complete"],
        )
        await wait_for_batch(database_url, batch)
        await settled(database_url, batch, 4)
    events = receiver.events()
    assert [event["type"] for event in events] == ["image", "image", "image", "complete"]
    assert {event["batch_id"] for event in events} == {str(batch)}
    assert sorted(event["position"] for event in events[:3]) == [0, 1, 2]
    assert events[3]["total"] == 3
    assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 4
    assert all(
        row["status"] == "delivered" and row["attempts"] == 1 for row in await deliveries(database_url, batch)
    )


async def test_by_default_only_complete_is_sent(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, receiver: Receiver
) -> None:
    cloud.add_workers(count=2)
    async with dispatcher(**outbound()):
        batch = await insert_batch(database_url, ["Carthage", "Utica"], webhook=receiver.url)
        await wait_for_batch(database_url, batch)
        await settled(database_url, batch, 1)
    assert [event["type"] for event in receiver.events()] == ["complete"]


async def test_a_failing_receiver_gets_retries_and_the_batch_stays_in_order(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, receiver: Receiver
) -> None:
    receiver.answers = [500, 503, 302]  # the first event fails three times (a redirect is not followed)
    cloud.add_workers(count=2)
    async with dispatcher(**outbound()):
        batch = await insert_batch(
            database_url, ["Byzantium", "Nicaea"], webhook=receiver.url, webhook_events=["image", "complete"]
        )
        await wait_for_batch(database_url, batch)
        await settled(database_url, batch, 3)
    bodies = [json.loads(body) for _, body in receiver.received]
    assert len(bodies) == 6
    first_id = receiver.received[0][0]["webhook-id"]
    assert [headers["webhook-id"] for headers, _ in receiver.received[:4]] == [first_id] * 4
    assert [body["type"] for body in bodies[3:]] == ["image", "image", "complete"]
    assert receiver.redirected_to == []
    rows = await deliveries(database_url, batch)
    assert [row["attempts"] for row in rows] == [4, 1, 1]
    assert rows[0]["last_status"] == 200


async def test_two_dispatchers_share_the_outbox_without_sending_twice_or_out_of_order(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, receiver: Receiver
) -> None:
    cloud.add_workers(count=4)
    async with dispatcher(**outbound()), dispatcher(**outbound()):
        batches = [
            await insert_batch(
                database_url,
                [f"{city} {n}" for n in range(3)],
                webhook=receiver.url,
                webhook_events=["image", "complete"],
            )
            for city in ("Ur", "Uruk", "Lagash")
        ]
        for batch in batches:
            await wait_for_batch(database_url, batch)
            await settled(database_url, batch, 4)
    events = receiver.events()
    assert len(events) == 12
    for batch in batches:
        mine = [event for event in events if event["batch_id"] == str(batch)]
        assert [event["type"] for event in mine] == ["image"] * 3 + ["complete"]
        assert [event["seq"] for event in mine] == sorted(event["seq"] for event in mine)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("https://127.0.0.1:{port}/hooks", "a loopback address"),
        ("https://localhost:{port}/hooks", "resolves to"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.1.2.3/hooks", "a private address"),
        ("http://example.com/hooks", "must be https"),
    ],
)
async def test_targets_the_address_checks_refuse_are_never_called(
    database_url: str,
    cloud: Cloud,
    dispatcher: DispatcherFactory,
    receiver: Receiver,
    target: str,
    reason: str,
) -> None:
    assert receiver.server is not None
    url = target.format(port=receiver.server.port)
    cloud.add_workers(count=1)
    # Inserted directly (PostgREST lets a user do so): the dispatcher's own check must hold.
    async with dispatcher(
        **outbound(outbound_webhook_allowed_hosts=[], outbound_webhook_give_up_seconds=0.3)
    ):
        batch = await insert_batch(database_url, ["Knossos"], webhook=url)
        await wait_for_batch(database_url, batch)
        await settled(database_url, batch, 1)
    (row,) = await deliveries(database_url, batch)
    assert row["status"] == "failed"
    assert reason in row["last_error"], row["last_error"]
    assert receiver.received == []


async def test_a_refused_delivery_holds_the_batchs_later_ones_until_it_gives_up(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, receiver: Receiver
) -> None:
    cloud.add_workers(count=1)
    async with dispatcher(**outbound(outbound_webhook_give_up_seconds=1.0)):
        batch = await insert_batch(
            database_url, ["Mycenae"], webhook=receiver.url, webhook_events=["image", "complete"]
        )
        receiver.answers = [500] * 100  # down for good
        await wait_for_batch(database_url, batch)
        await asyncio.sleep(0.5)
        rows = await deliveries(database_url, batch)
        assert [row["status"] for row in rows] == ["pending", "pending"]
        assert rows[1]["attempts"] == 0, "the second waits behind the first"
