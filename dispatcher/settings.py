"""The dispatcher's settings (the database's are the kernel's), from the environment and .env."""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from kernel.settings import DatabaseSettings, comma_list
from kernel.webhook_signatures import secret_key


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
    adapter_bucket: str = "character-adapters"
    adapter_url_seconds: int = Field(
        default=900,
        ge=60,
        description="how long the download URL of a character's adapter, signed at each submission, "
        "stays valid: long enough for the job's wait in RunPod's queue",
    )
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
    admission: Literal["capacity", "fixed"] = Field(
        default="capacity",
        description="capacity: keep submitted one job per RunPod worker (running, idle, initializing) plus "
        "ADMISSION_QUEUE_DEPTH per endpoint, the rest queued in Postgres; fixed: submit up to MAX_IN_FLIGHT",
    )
    admission_queue_depth: int | None = Field(
        default=None,
        ge=0,
        description="jobs kept waiting in each endpoint's RunPod queue beyond its workers: the demand "
        "RunPod's autoscaler sees, and how many a newcomer's job waits behind; default: 1, plus one per "
        "worker that frees while a finish is being noticed (learnt: about 1 with a webhook, more polling)",
    )
    capacity_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="how often each endpoint's /health is read: for admission, and (polling) to learn "
        "which jobs have finished; also how much later the planned polls come then, and how often "
        "replicas publish the jobs they hold (they share the capacity)",
    )
    poll_finish_quantile: float = Field(
        default=0.6,
        gt=0,
        lt=1,
        description="adaptive polling: a running job is first looked at once this share of recent jobs "
        "of its size had finished (higher: fewer calls that find it still running, later detection)",
    )
    reuse_seeded_images: bool = True
    image_delivery: Literal["upload", "base64"] = Field(
        default="upload",
        description="upload: the worker puts the image in Storage through a signed upload URL made at "
        "submit time, the dispatcher reads it back to check it; base64: the image comes in RunPod's "
        "result, as workers before format/upload_url support need (they refuse the unknown field)",
    )
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

    outbound_webhook_secret: SecretStr | None = Field(
        default=None,
        description="signs the webhooks batches ask for (Standard Webhooks, whsec_ and base64); unset: "
        "none are delivered (they wait in the outbox)",
    )
    outbound_webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated hosts a webhook may reach even at a private address, and by plain http",
    )
    outbound_webhook_retry_base_seconds: float = Field(default=5, gt=0)
    outbound_webhook_retry_max_seconds: float = Field(default=3600, gt=0)
    outbound_webhook_give_up_seconds: float = Field(
        default=24 * 3600, gt=0, description="a delivery is retried until it is this old"
    )

    @field_validator("outbound_webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key(value.get_secret_value())  # ValueError says what is wrong, never the value
        return value

    @field_validator("outbound_webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return comma_list(value)
        return value

    @field_validator("runpod_endpoint_id", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            ids = comma_list(value)
            if not ids:
                raise ValueError("give at least one endpoint id")
            return ids
        return value


def load_dispatcher_settings() -> DispatcherSettings:
    return DispatcherSettings()  # type: ignore[call-arg]
