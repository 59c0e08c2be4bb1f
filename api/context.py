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
