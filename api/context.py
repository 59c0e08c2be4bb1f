"""What every function gets: the caller's identity, the database, the progress broker, limits."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from api import body
from api.auth import Authenticator, Caller, bearer_token
from api.broker import EventBroker
from api.errors import HttpError
from api.ratelimit import Limiter
from api.settings import ApiSettings
from kernel.supervisor import Supervisor


@dataclass
class FunctionContext:
    settings: ApiSettings
    pool: AsyncConnectionPool
    broker: EventBroker
    auth: Authenticator
    limiter: Limiter
    tasks: Supervisor  # the app's background tasks (the event broker)

    async def caller(self, request: Request) -> Caller:
        token = bearer_token(request.headers.get("authorization"), request.query_params.get("access_token"))
        return await self.auth.caller(token)

    async def rate_limit(self, caller: Caller, request: Request) -> None:
        """Users each have their own bucket; anon-key callers (the old frontend: every user shares
        that key) one per client address; admins none."""
        if caller.is_admin:
            return
        key = str(caller.user_id) if caller.user_id is not None else f"anon:{self.client_address(request)}"
        retry_in_s = await self.limiter.take(key)
        if retry_in_s:
            raise HttpError(
                429,
                f"too many requests: try again in {retry_in_s:.0f} s",
                headers={"Retry-After": str(max(1, round(retry_in_s)))},
            )

    def client_address(self, request: Request) -> str:
        """The connection's address, or, when that is a trusted proxy, the nearest X-Forwarded-For
        hop that is not one: the only hop no client can write (a client sets the leftmost ones)."""
        address = request.client.host if request.client else ""
        if not self._trusted(address):
            return address
        hops = [hop.strip() for hop in request.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
            address = hop
        return address

    def _trusted(self, address: str) -> bool:
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.settings.trusted_proxies)

    async def json_body(self, request: Request) -> dict[str, Any]:
        return await body.json_object(request, self.settings.max_body_bytes)

    def admin_only(self, caller: Caller) -> None:
        if not caller.is_admin:
            raise HttpError(403, "admin only: use the service-role key or an admin account")
