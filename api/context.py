"""What every function gets: the caller's identity, the database, the progress broker, limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from api.auth import Authenticator, Caller, bearer_token
from api.broker import EventBroker
from api.errors import HttpError
from api.ratelimit import RateLimiter
from api.settings import ApiSettings


@dataclass
class FunctionContext:
    settings: ApiSettings
    pool: AsyncConnectionPool
    broker: EventBroker
    auth: Authenticator
    limiter: RateLimiter

    async def caller(self, request: Request) -> Caller:
        token = bearer_token(request.headers.get("authorization"), request.query_params.get("access_token"))
        return await self.auth.caller(token)

    def rate_limit(self, caller: Caller, request: Request) -> None:
        """Users each have their own bucket; anon-key callers (the old frontend: every user shares
        that key) one per client address, the first X-Forwarded-For hop behind a proxy; admins none."""
        if caller.is_admin:
            return
        if caller.user_id is not None:
            key = str(caller.user_id)
        else:
            forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
            key = f"anon:{forwarded or (request.client.host if request.client else '')}"
        retry_in_s = self.limiter.take(key)
        if retry_in_s:
            raise HttpError(
                429,
                f"too many requests: try again in {retry_in_s:.0f} s",
                headers={"Retry-After": str(max(1, round(retry_in_s)))},
            )

    def admin_only(self, caller: Caller) -> None:
        if not caller.is_admin:
            raise HttpError(403, "admin only: use the service-role key or an admin account")


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HttpError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body
