"""The dispatcher's wake-up sources: Postgres LISTEN (kernel.listen), and Supabase Realtime.

Notifications only wake: the table decides. Each source reconnects (with backoff)
after its server restarts or drops it, and every (re)connect triggers a catch-up
sweep, since notifications sent while nobody listened are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from kernel.logs import first_line

if TYPE_CHECKING:
    from realtime import AsyncRealtimeClient

log = structlog.get_logger("dispatcher.wakeup")


class RealtimeListener:
    """Supabase Realtime (``postgres_changes``) as a wake-up source, for where LISTEN is not
    available (the transaction pooler): it needs only the project URL and a key.

    Realtime is at-most-once, and the official client gives up for good, silently, after a few
    failed reconnects; so this supervises it: it watches the channel, and when the socket or the
    channel is gone it closes the client, waits (backoff), builds a new one and subscribes again.
    The client calls its callbacks synchronously, so they only set a flag on the loop.
    """

    def __init__(
        self,
        supabase_url: str,
        key: str,
        on_wake: Callable[[], None],
        on_connect: Callable[[], None],
        max_backoff_s: float = 10.0,
        check_interval_s: float = 0.5,
    ) -> None:
        self.url = f"{supabase_url.rstrip('/')}/realtime/v1"
        self.key = key
        self.on_wake = on_wake
        self.on_connect = on_connect
        self.max_backoff_s = max_backoff_s
        self.check_interval_s = check_interval_s
        self.connected = asyncio.Event()

    async def run(self) -> None:
        from realtime import AsyncRealtimeClient

        backoff = 0.2
        while True:
            client = AsyncRealtimeClient(self.url, self.key, auto_reconnect=False, max_retries=1)
            try:
                lost = await self._subscribe(client)
                self.connected.set()
                backoff = 0.2
                log.info("wakeup.realtime_subscribed", url=self.url)
                self.on_connect()
                # The channel reports errors and closes; a socket that is simply gone, it may not.
                while client.is_connected and not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.check_interval_s)
                log.warning("wakeup.realtime_lost", url=self.url)
            except Exception as exc:  # whatever the client raises, the answer is to rebuild it
                log.warning(
                    "wakeup.realtime_unavailable", url=self.url, error=first_line(exc), retry_in_s=backoff
                )
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await client.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _subscribe(self, client: AsyncRealtimeClient) -> asyncio.Event:
        """Join; the event returned is set when the channel leaves the subscribed state."""
        from realtime import RealtimePostgresChangesListenEvent as Event
        from realtime import RealtimeSubscribeStates

        wake: Callable[[object], None] = lambda _change: self.on_wake()  # noqa: E731
        channel = client.channel("zimage-dispatcher")
        # New jobs, and jobs going back to the queue (retries, requeues): the claim decides the rest.
        channel.on_postgres_changes(Event.Insert, wake, table="image_jobs", schema="public")
        channel.on_postgres_changes(
            Event.Update, wake, table="image_jobs", schema="public", filter="status=eq.queued"
        )
        states: list[RealtimeSubscribeStates] = []
        lost = asyncio.Event()

        def on_state(state: RealtimeSubscribeStates, _error: Exception | None) -> None:
            states.append(state)
            if state != RealtimeSubscribeStates.SUBSCRIBED:
                lost.set()

        await channel.subscribe(on_state)
        if states[-1:] != [RealtimeSubscribeStates.SUBSCRIBED]:
            raise ConnectionError(f"subscribe ended {states[-1].value if states else 'without an answer'}")
        return lost
