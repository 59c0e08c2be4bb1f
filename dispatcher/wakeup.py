"""Postgres LISTEN as the dispatcher's wake-up source.

Notifications only wake: the table decides. The connection is in autocommit and
is re-established (with backoff) after Postgres restarts or drops it; every
(re)connect triggers a catch-up sweep, since notifications sent while nobody
listened are gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import structlog

from dispatcher.logs import first_line

log = structlog.get_logger("dispatcher.wakeup")


class PostgresListener:
    def __init__(
        self,
        database_url: str,
        handlers: dict[str, Callable[[str], None]],
        on_connect: Callable[[], None],
        max_backoff_s: float = 5.0,
        application_name: str = "zimage-dispatcher",
    ) -> None:
        self.database_url = database_url
        self.handlers = handlers
        self.on_connect = on_connect
        self.max_backoff_s = max_backoff_s
        self.application_name = application_name
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, application_name=self.application_name
                ) as conn:
                    for channel in self.handlers:
                        await conn.execute(f'listen "{channel}"')
                    self.connected.set()
                    backoff = 0.1
                    log.info("wakeup.listening", channels=sorted(self.handlers))
                    self.on_connect()
                    async for note in conn.notifies():
                        self.handlers[note.channel](note.payload)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                log.warning(
                    "wakeup.disconnected",
                    error=first_line(exc),
                    retry_in_s=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
