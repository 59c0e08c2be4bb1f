"""Outbound webhooks: delivering the outbox (``image_webhook_deliveries``) to the URLs batches
named, signed as the Standard Webhooks specification says.

Each delivery is the event's JSON (with ``type`` and ``batch_id``) POSTed with ``webhook-id``
(the event's, the same on every retry, for the receiver to drop duplicates), ``webhook-timestamp``
and ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body`` under the
``whsec_`` secret). At least once: a delivery is marked done only after a 2xx. In order per
batch: only a batch's oldest undelivered row is ever claimed, with a lease, so several
dispatchers share the outbox without sending one batch's events out of order. A failed attempt
is retried after ``base x 2^(attempt-1)`` (jittered, capped), for at least ``give_up_s``.

Where a delivery may go is decided when it is sent, after DNS: every address the name resolves
to must be a public one (not loopback, private, link-local, which holds the cloud metadata
address, shared, multicast or reserved), unless the host is in the allowed list, and the
connection is made to exactly the addresses that were checked, so a name that resolves to
something else a moment later (DNS rebinding) cannot slip through. Plain http only to allowed
hosts; redirects are not followed; connect and read time out quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult

from dispatcher.domain import WebhookDelivery
from dispatcher.metrics import OUTBOUND_WEBHOOKS
from dispatcher.store import PostgresJobStore
from kernel.webhook_signatures import secret_key, signature
from kernel.webhook_targets import address_problem, allowed_hosts, url_problem

log = structlog.get_logger("dispatcher.outbound")

CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5.0, 10.0
MAX_ERROR_CHARS = 300


class Refused(Exception):
    """The target may not be called (its scheme, or the addresses its name resolves to)."""


@dataclass(frozen=True)
class OutboundPolicy:
    secret: bytes  # the key inside the whsec_ secret
    allowed_hosts: frozenset[str]
    retry_base_s: float = 5.0
    retry_max_s: float = 3600.0
    give_up_s: float = 24 * 3600.0

    @classmethod
    def from_secret(cls, whsec: str, hosts: Iterable[str], **retries: float) -> OutboundPolicy:
        return cls(secret_key(whsec), allowed_hosts(hosts), **retries)

    def retry_in(self, attempts: int) -> float:
        full = min(self.retry_base_s * 2 ** max(attempts - 1, 0), self.retry_max_s)
        return float(full) * random.uniform(0.8, 1.0)


class _Pinned(AbstractResolver):
    """Hands aiohttp exactly the addresses that were checked."""

    def __init__(self, results: list[ResolveResult]) -> None:
        self._results = results

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return self._results

    async def close(self) -> None:
        return None


async def checked_addresses(url: str, policy: OutboundPolicy) -> tuple[str, list[ResolveResult]]:
    """The URL's host and its addresses, once each is allowed; Refused names the reason."""
    if (problem := url_problem(url, policy.allowed_hosts)) is not None:
        raise Refused(problem)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    allowed = host in policy.allowed_hosts
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"{host} does not resolve: {exc.strerror}") from None
    results: list[ResolveResult] = []
    for family, _, proto, _, sockaddr in infos:
        address = str(sockaddr[0])
        if not allowed and (why := address_problem(address)) is not None:
            raise Refused(f"{host} resolves to {address}, {why}")
        results.append(
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": family,
                "proto": proto,
                "flags": socket.AI_NUMERICHOST,
            }
        )
    return host, results


class OutboundWebhooks:
    """The outbox's delivery loop: claim due heads, send them, record how it went."""

    def __init__(
        self, store: PostgresJobStore, policy: OutboundPolicy, batch: int = 16, idle_s: float = 0.5
    ) -> None:
        self.store, self.policy, self.batch, self.idle_s = store, policy, batch, idle_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the round in flight and return (a round is a few seconds at most), rather than
        be cancelled mid-statement; what is left is delivered by whoever claims it next."""
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            deliveries = await self.store.claim_webhook_deliveries(self.batch, lease_s=60)
            if deliveries:
                await asyncio.gather(*(self._deliver(delivery) for delivery in deliveries))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.idle_s)

    async def _deliver(self, delivery: WebhookDelivery) -> None:
        delivery_log = log.bind(batch_id=str(delivery.batch_id), delivery_id=delivery.id, type=delivery.type)
        status, error = None, None
        try:
            status = await self.send(delivery)
            if not 200 <= status < 300:
                error = f"answered {status}"
        except Refused as refused:
            error = f"refused: {refused}"
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS] or type(exc).__name__
        if error is None:
            await self.store.webhook_delivered(delivery.id, status)
            OUTBOUND_WEBHOOKS.labels(outcome="delivered").inc()
            delivery_log.info("webhook.delivered", status=status, attempts=delivery.attempts)
            return
        outcome = await self.store.webhook_attempt_failed(
            delivery.id, status, error, self.policy.retry_in(delivery.attempts), self.policy.give_up_s
        )
        OUTBOUND_WEBHOOKS.labels(outcome="given_up" if outcome == "failed" else "retrying").inc()
        delivery_log.warning(
            "webhook.attempt_failed", error=error, attempts=delivery.attempts, outcome=outcome
        )

    async def send(self, delivery: WebhookDelivery) -> int:
        """POST the signed body to the checked addresses; the HTTP status."""
        _, addresses = await checked_addresses(delivery.url, self.policy)
        body = json.dumps(delivery.body, separators=(",", ":"), ensure_ascii=False).encode()
        message_id, timestamp = f"evt_{delivery.event_id}", int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "zimage-webhooks/1",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self.policy.secret, message_id, timestamp, body),
        }
        timeout = aiohttp.ClientTimeout(
            total=CONNECT_TIMEOUT_S + READ_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
        )
        connector = aiohttp.TCPConnector(resolver=_Pinned(addresses), use_dns_cache=False, force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.post(delivery.url, data=body, headers=headers, allow_redirects=False) as response,
        ):
            await response.read()
            return response.status
