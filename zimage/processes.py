"""The processes: ``zimage serve`` (the app and the dispatcher in one), ``zimage http`` (the app
alone) and ``zimage dispatch`` (the dispatcher alone, with its webhook, health and metrics)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from api.app import Extras, build_app, running_api
from api.context import FunctionContext
from api.settings import ApiSettings
from dispatcher.app import dispatcher_health, webhook_route
from dispatcher.service import running_service
from dispatcher.settings import DispatcherSettings
from kernel.serving import serve_until_signal


@contextlib.asynccontextmanager
async def running_app(
    api: ApiSettings, dispatcher: DispatcherSettings | None = None
) -> AsyncIterator[tuple[Starlette, FunctionContext]]:
    """The app, with the dispatcher's webhook and health when one runs in this process."""
    async with contextlib.AsyncExitStack() as stack:
        extras = None
        if dispatcher is not None:
            service = await stack.enter_async_context(running_service(dispatcher))
            extras = Extras(
                [webhook_route(service.dispatcher, service.pool)],
                lambda: dispatcher_health(service.dispatcher, service.wakeups),
            )
        context = await stack.enter_async_context(running_api(api))
        yield build_app(context, extras), context


async def serve(api: ApiSettings, dispatcher: DispatcherSettings | None, host: str, port: int) -> None:
    async with running_app(api, dispatcher) as (app, context):
        # Open streams end first (with an event saying so), or uvicorn would wait on them forever.
        await serve_until_signal(app, host, port, before_stop=context.broker.close)


async def serve_dispatcher(settings: DispatcherSettings, host: str, port: int) -> None:
    """``zimage dispatch``: the dispatcher and its webhook/health/metrics routes, until SIGTERM or Ctrl-C."""
    async with running_service(settings) as service:
        await serve_until_signal(service.app(), host, port)
