"""Who is calling: Supabase access tokens verified properly, and the project's keys.

User tokens are JWTs signed either with the project's legacy secret (HS256) or with
one of the asymmetric keys the project publishes at its JWKS URL (RS256, ES256);
both must carry ``aud: authenticated``, an unexpired ``exp`` and a user id. The
service-role key (or a token whose ``app_metadata.role`` is ``admin``, which only
the server can set) makes an admin. The anon key, which the existing frontend
sends, is accepted only when the deployment allows it. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import httpx
import jwt
import structlog

from api.errors import HttpError
from api.settings import ApiSettings

log = structlog.get_logger("api.auth")

ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
JWKS_REFRESH_MIN_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Caller:
    kind: Literal["user", "admin", "anon"]
    user_id: UUID | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def may_see(self, owner: UUID | None) -> bool:
        """Owners see their batches; admins see all. Anon batches are admin-only (and their creator's
        own stream, which never asks)."""
        return self.is_admin or (self.kind == "user" and owner == self.user_id)


class AuthError(HttpError):
    """401: no, or no valid, credentials."""


class Authenticator:
    def __init__(self, settings: ApiSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_fetched_at = float("-inf")
        self._keys_lock = asyncio.Lock()

    async def caller(self, token: str | None) -> Caller:
        if not token:
            raise AuthError(
                401,
                "missing access token: send 'Authorization: Bearer <token>' (EventSource: ?access_token=...)",
            )
        if _same(token, self.settings.supabase_service_role_key.get_secret_value()):
            return Caller("admin")
        anon_key = self.settings.supabase_anon_key
        if anon_key is not None and _same(token, anon_key.get_secret_value()):
            return self._anon()
        return self._from_claims(await self._verified_claims(token))

    def _anon(self) -> Caller:
        if not self.settings.allow_anon_key:
            raise AuthError(401, "the anon key is not accepted here: send a signed-in user's access token")
        return Caller("anon")

    def _from_claims(self, claims: dict[str, Any]) -> Caller:
        role = claims.get("role")
        if role == "service_role":
            return Caller("admin")
        if role == "anon":
            return self._anon()
        audience = claims.get("aud")
        if "authenticated" not in ([audience] if isinstance(audience, str) else (audience or [])):
            raise AuthError(401, "access token has the wrong audience: expected 'authenticated'")
        try:
            user_id = UUID(str(claims.get("sub")))
        except ValueError:
            raise AuthError(401, "access token has no user id (sub)") from None
        app_metadata = claims.get("app_metadata")
        if isinstance(app_metadata, dict) and app_metadata.get("role") == "admin":
            return Caller("admin", user_id)
        return Caller("user", user_id)

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "malformed access token") from None
        algorithm = header.get("alg")
        try:
            if algorithm == "HS256":
                secret = self.settings.supabase_jwt_secret
                if secret is None:
                    raise AuthError(401, "HS256 tokens are not accepted: this deployment has no JWT secret")
                key: Any = secret.get_secret_value()
            elif algorithm in ASYMMETRIC_ALGORITHMS:
                key = await self._signing_key(str(header.get("kid", "")))
            else:
                raise AuthError(401, f"access token algorithm {algorithm!r} is not accepted")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                options={"require": ["exp"], "verify_aud": False},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "access token expired: refresh the session and retry") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "access token signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"access token rejected: {exc}") from None
        return claims

    async def _signing_key(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:
            await self._refresh_keys()
        try:
            return self._keys[kid]
        except KeyError:
            raise AuthError(401, "access token is signed with a key this project does not publish") from None

    async def _refresh_keys(self) -> None:
        async with self._keys_lock:
            # A forged kid must not turn every request into a JWKS fetch.
            if time.monotonic() - self._keys_fetched_at < JWKS_REFRESH_MIN_INTERVAL_S:
                return
            self._keys_fetched_at = time.monotonic()
            try:
                response = await self.http.get(self.settings.jwks_url, timeout=5)
                response.raise_for_status()
                keys = jwt.PyJWKSet.from_dict(response.json()).keys
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                log.warning("auth.jwks_unavailable", url=self.settings.jwks_url, error=str(exc))
                return
            self._keys = {str(key.key_id): key for key in keys if key.key_id}


def _same(token: str, key: str) -> bool:
    return hmac.compare_digest(token.encode(), key.encode())


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return query_token or None
