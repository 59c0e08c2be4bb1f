"""The one typed settings object, read from the environment and an optional .env file.

Nothing else in the code reads os.environ: a missing or malformed value stops
start-up here, with a message that names the variable.
"""

from __future__ import annotations

from pydantic import Field, PostgresDsn
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseSettings):
    """What every command that touches the database needs."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: PostgresDsn = Field(
        description="Postgres connection string; on Supabase: Project Settings > Database > "
        "Connection string (direct or session pooler, port 5432)",
    )


def load_database_settings() -> DatabaseSettings:
    # Deliberately no arguments: pydantic-settings fills the fields from the
    # environment, which mypy cannot see.
    return DatabaseSettings()  # type: ignore[call-arg]
