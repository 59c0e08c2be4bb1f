"""The HTTP app's settings (``zimage http``, and ``zimage serve`` with the dispatcher's)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kernel.settings import DatabaseSettings, comma_list


class ApiSettings(DatabaseSettings):
    supabase_url: str = Field(description="Project URL; Supabase: Project Settings > API")
    supabase_service_role_key: SecretStr = Field(
        description="service_role key: admin calls present it; Supabase: Project Settings > API"
    )
    supabase_anon_key: SecretStr | None = Field(
        default=None,
        description="anon (publishable) key, accepted from the existing frontend when ALLOW_ANON_KEY is on; "
        "Supabase: Project Settings > API",
    )
    supabase_jwt_secret: SecretStr | None = Field(
        default=None,
        description="legacy JWT secret (HS256 access tokens); Supabase: Project Settings > JWT Keys",
    )
    supabase_jwks_url: str | None = Field(
        default=None,
        description="where the project publishes its asymmetric signing keys "
        "(default: {SUPABASE_URL}/auth/v1/.well-known/jwks.json)",
    )
    allow_anon_key: bool = Field(
        default=True,
        description="accept the anon key as the old edge function did (batches that belong to no user)",
    )
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default=["*"], description="origins allowed to call the functions from a browser, comma-separated"
    )
    rate_limit_per_minute: float = Field(
        default=30, gt=0, description="generate-images calls per user per minute (sustained)"
    )
    rate_limit_burst: int = Field(
        default=10, ge=1, description="generate-images calls a user may make at once"
    )
    wait_limit_seconds: float = Field(
        default=120,
        gt=0,
        description="generate-images that waits answers 202 with the links once a batch takes longer",
    )
    rate_limit_store: Literal["postgres", "memory"] = Field(
        default="postgres",
        description="postgres: one limit for every replica (a round trip per call); memory: per process",
    )
    estimate_interval_seconds: float = Field(
        default=5, gt=0, description="how often streams of unfinished batches get an estimate event"
    )
    sse_ping_seconds: float = Field(default=15, gt=0, description="keep-alive comment interval on streams")
    public_url: str | None = Field(
        default=None,
        description="the app's public base URL, e.g. https://images.example.com, for the links in its "
        "answers (status_url, events_url, cancel_url); default: the address the request came to",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="largest request body a function reads (413 beyond)"
    )
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default=[],
        description="addresses or networks of the proxies whose X-Forwarded-For is believed, "
        "comma-separated (default none: the connection's own address is the client's)",
    )

    outbound_webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="comma-separated hosts a batch's webhook may name at a private address or by plain "
        "http (the dispatchers check again when they deliver)",
    )

    @field_validator("cors_allowed_origins", "outbound_webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return comma_list(value) if isinstance(value, str) else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [ip_network(item, strict=False) for item in comma_list(value)]
        return value

    @property
    def jwks_url(self) -> str:
        return self.supabase_jwks_url or f"{self.supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json"


def load_api_settings() -> ApiSettings:
    return ApiSettings()  # type: ignore[call-arg]


class ClientSettings(BaseSettings):
    """``zimage submit``: where the app is and whose token to send."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    zimage_api_url: str = Field(
        default="http://127.0.0.1:8080", description="base URL of the app (`zimage serve` or `zimage http`)"
    )
    zimage_token: SecretStr | None = Field(
        default=None, description="access token to send (default: SUPABASE_SERVICE_ROLE_KEY)"
    )
    supabase_service_role_key: SecretStr | None = None

    def token(self) -> str | None:
        key = self.zimage_token or self.supabase_service_role_key
        return key.get_secret_value() if key else None
