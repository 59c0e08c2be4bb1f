"""The dispatcher assembled from its settings: the adapters plugged into the core's ports, its
loops and wake-up sources run under a supervisor, stopped gracefully on exit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import structlog
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from dispatcher.app import dispatcher_routes
from dispatcher.claiming import Dispatcher
from dispatcher.outbound import OutboundPolicy, OutboundWebhooks
from dispatcher.ports import WakeupSource
from dispatcher.runpod import RetryPolicy, RunPodClient
from dispatcher.settings import DispatcherSettings
from dispatcher.storage import SupabaseStorage
from dispatcher.store import PostgresJobStore
from dispatcher.wakeup import RealtimeListener
from kernel.db import connection_pool
from kernel.http import http_client
from kernel.listen import PostgresListener
from kernel.supervisor import RestartPolicy, Supervisor

log = structlog.get_logger("dispatcher.service")


@dataclass
class Service:
    dispatcher: Dispatcher
    pool: AsyncConnectionPool
    http: httpx.AsyncClient
    sources: dict[str, WakeupSource]  # the enabled wake-up sources
    supervisor: Supervisor

    @property
    def wakeups(self) -> dict[str, asyncio.Event]:
        """Each enabled wake-up source with its connected flag."""
        return {name: source.connected for name, source in self.sources.items()}

    def app(self) -> Starlette:
        return Starlette(routes=dispatcher_routes(self))


@contextlib.asynccontextmanager
async def running_service(
    settings: DispatcherSettings,
    retry: RetryPolicy | None = None,
    stop_grace_s: float = 10.0,
    restarts: RestartPolicy | None = None,
) -> AsyncIterator[Service]:
    """Start the dispatcher (claim loop, lease renewer, prober, wake-up sources) and stop it
    gracefully on exit."""
    pool = connection_pool(str(settings.database_url))
    # One connection per job in flight at most: a job waiting for a free connection holds its slot.
    http, storage_http = http_client(settings.max_in_flight), http_client(settings.max_in_flight)
    await pool.open(wait=True, timeout=30)
    store = PostgresJobStore(pool, settings.dispatcher_id, settings.lease_seconds)
    runpod = RunPodClient(
        http, settings.runpod_endpoint_base_url, settings.runpod_api_key.get_secret_value(), retry
    )
    storage = SupabaseStorage(
        storage_http,
        settings.supabase_url,
        settings.supabase_service_role_key.get_secret_value(),
        settings.storage_bucket,
    )
    adapters = SupabaseStorage(
        storage_http,
        settings.supabase_url,
        settings.supabase_service_role_key.get_secret_value(),
        settings.adapter_bucket,
    )
    dispatcher = Dispatcher(settings, store, runpod, storage, adapters)
    listener = PostgresListener(
        str(settings.database_url),
        {"image_jobs_queued": dispatcher.wake, "image_job_completed": dispatcher.hint_completed},
        on_connect=dispatcher.wake,
    )
    realtime = RealtimeListener(
        settings.supabase_url,
        settings.supabase_service_role_key.get_secret_value(),
        on_wake=dispatcher.wake,
        on_connect=dispatcher.wake,
    )
    sources: dict[str, WakeupSource] = {
        name: source
        for name, source in (("postgres", listener), ("realtime", realtime))
        if settings.wakeup_source in (name, "both")
    }
    supervisor = Supervisor(restarts)
    for name, loop in dispatcher.loops().items():
        supervisor.start(name, loop)
    for name, source in sources.items():
        supervisor.start(f"wakeup-{name}", source.run)
    outbound: OutboundWebhooks | None = None
    if settings.outbound_webhook_secret is not None:
        policy = OutboundPolicy.from_secret(
            settings.outbound_webhook_secret.get_secret_value(),
            settings.outbound_webhook_allowed_hosts,
            retry_base_s=settings.outbound_webhook_retry_base_seconds,
            retry_max_s=settings.outbound_webhook_retry_max_seconds,
            give_up_s=settings.outbound_webhook_give_up_seconds,
        )
        outbound = OutboundWebhooks(store, policy)
        supervisor.start("outbound-webhooks", outbound.run)
    log.info(
        "dispatcher.started",
        dispatcher_id=settings.dispatcher_id,
        endpoints=settings.runpod_endpoint_id,
        webhook=bool(settings.webhook_public_url),
        outbound_webhooks=settings.outbound_webhook_secret is not None,
        wakeup=settings.wakeup_source,
    )
    try:
        yield Service(dispatcher, pool, http, sources, supervisor)
    finally:
        if outbound is not None:
            outbound.stop()
        await dispatcher.stop(stop_grace_s)
        await supervisor.close()
        await http.aclose()
        await storage_http.aclose()
        await pool.close()
