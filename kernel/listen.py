"""A Postgres LISTEN connection that stays up: reconnects with backoff, says when it is connected.

Used by the dispatcher (new jobs, completions seen by another replica) and by the app's event
broker (new batch events). Notifications sent while it was disconnected are gone, so every
(re)connect calls ``on_connect``: the caller catches up from the tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import structlog

from kernel.logs import first_line

log = structlog.get_logger("kernel.listen")


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
