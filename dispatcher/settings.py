"""The one typed settings object, read from the environment and an optional .env file.

Nothing else in the code reads os.environ: a missing or malformed value stops
start-up here, with a message that names the variable and says where to find it.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from pydantic import Field, PostgresDsn, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_CONFIG = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)


class DatabaseSettings(BaseSettings):
    """What every command that touches the database needs."""

    model_config = _CONFIG

    database_url: PostgresDsn = Field(
        description="Postgres connection string; on Supabase: Project Settings > Database > "
        "Connection string (direct or session pooler, port 5432: LISTEN needs a session)",
    )


class DispatcherSettings(DatabaseSettings):
    """The dispatcher service."""

    supabase_url: str = Field(description="Project URL; Supabase: Project Settings > API")
    supabase_service_role_key: SecretStr = Field(
        description="service_role key (server side only); Supabase: Project Settings > API"
    )
    runpod_api_key: SecretStr = Field(description="RunPod API key; RunPod console > Settings > API Keys")
    runpod_endpoint_id: Annotated[list[str], NoDecode] = Field(
        description="RunPod endpoint id, or several separated by commas for failover; "
        "RunPod console > Serverless"
    )
    runpod_endpoint_base_url: str = "https://api.runpod.ai/v2"
    storage_bucket: str = "generated-assets"
    webhook_public_url: str | None = Field(
        default=None,
        description="public base URL of this service, e.g. https://images.example.com; RunPod then POSTs "
        "results to {url}/runpod/webhook/... instead of being polled",
    )
    webhook_secret: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_urlsafe(32)))
    dispatcher_id: str = Field(default_factory=lambda: f"dispatcher-{secrets.token_hex(4)}")
    max_in_flight: int = Field(default=64, ge=1)
    max_in_flight_per_user: int = Field(default=16, ge=1)
    lease_seconds: float = Field(default=30, gt=1)
    sweep_interval_seconds: float = Field(default=5, gt=0)
    backoff_base_seconds: float = Field(default=2, ge=0)
    backoff_max_seconds: float = Field(default=60, ge=0)
    execution_timeout_seconds: float = Field(default=300, gt=0)
    queue_budget_seconds: float = Field(default=600, gt=0)
    lost_submit_grace_seconds: float = Field(default=30, ge=0)
    endpoint_cooldown_seconds: float = Field(default=60, ge=0)
    endpoint_probe_seconds: float = Field(
        default=15,
        gt=0,
        description="how often an endpoint that refused the API key (401/403) is asked again",
    )
    reuse_seeded_images: bool = True
    fixed_poll_interval_seconds: float | None = Field(
        default=None,
        gt=0,
        description="poll every N seconds instead of adaptively (the old service's way; for comparison)",
    )
    wakeup_source: Literal["postgres", "realtime", "both", "none"] = Field(
        default="postgres",
        description="postgres: LISTEN (needs a direct or session-pooled DATABASE_URL); realtime: Supabase "
        "Realtime (SUPABASE_URL and the key only); both; none: the sweep alone",
    )

    @field_validator("runpod_endpoint_id", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            ids = [part.strip() for part in value.split(",") if part.strip()]
            if not ids:
                raise ValueError("give at least one endpoint id")
            return ids
        return value


def configuration_errors(error: ValidationError) -> list[str]:
    """One line per bad variable: its name, what is wrong, and where to find the right value."""
    fields: dict[str, FieldInfo] = {}
    for model in BaseSettings.__subclasses__() + DatabaseSettings.__subclasses__():
        if model.__name__ == error.title:
            fields = model.model_fields
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "settings"
        where = fields[name].description if name in fields else None
        lines.append(f"{name.upper()}: {problem['msg']}" + (f" ({where})" if where else ""))
    return lines


def load_database_settings() -> DatabaseSettings:
    # Deliberately no arguments: pydantic-settings fills the fields from the
    # environment, which mypy cannot see.
    return DatabaseSettings()  # type: ignore[call-arg]


def load_dispatcher_settings() -> DispatcherSettings:
    return DispatcherSettings()  # type: ignore[call-arg]
