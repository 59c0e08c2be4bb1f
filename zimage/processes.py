"""The processes: ``zimage serve`` (the app and the dispatcher in one), ``zimage http`` (the app
alone) and ``zimage dispatch`` (the dispatcher alone, with its webhook, health and metrics)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette

from api.app import Extras, build_app, running_api
from api.context import FunctionContext
from api.settings import ApiSettings
from dispatcher.app import dispatcher_health, webhook_route
from dispatcher.service import running_service
from dispatcher.settings import DispatcherSettings
from kernel.serving import serve_until_signal
from kernel.supervisor import Supervisor


@dataclass
class RunningApp:
    app: Starlette
    context: FunctionContext
    supervisors: list[Supervisor]  # the app's background tasks, and the dispatcher's if it runs here


@contextlib.asynccontextmanager
async def running_app(
    api: ApiSettings, dispatcher: DispatcherSettings | None = None
) -> AsyncIterator[RunningApp]:
    """The app, with the dispatcher's webhook and health when one runs in this process."""
    async with contextlib.AsyncExitStack() as stack:
        extras, supervisors = None, []
        if dispatcher is not None:
            service = await stack.enter_async_context(running_service(dispatcher))
            extras = Extras([webhook_route(service.dispatcher)], lambda: dispatcher_health(service))
            supervisors.append(service.supervisor)
        context = await stack.enter_async_context(running_api(api))
        yield RunningApp(build_app(context, extras), context, [context.tasks, *supervisors])


async def serve(api: ApiSettings, dispatcher: DispatcherSettings | None, host: str, port: int) -> None:
    async with running_app(api, dispatcher) as running:
        # Open streams end first (with an event saying so), or uvicorn would wait on them forever.
        await serve_until_signal(
            running.app, host, port, before_stop=running.context.broker.close, supervisors=running.supervisors
        )


async def serve_dispatcher(settings: DispatcherSettings, host: str, port: int) -> None:
    """``zimage dispatch``: the dispatcher and its webhook/health/metrics routes, until SIGTERM or Ctrl-C."""
    async with running_service(settings) as service:
        await serve_until_signal(service.app(), host, port, supervisors=[service.supervisor])
