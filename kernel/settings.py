"""Settings every process shares, read from the environment and an optional .env file.

Nothing else in the code reads os.environ: a missing or malformed value stops start-up with a
message that names the variable and says where to find it (configuration_errors).
"""

from __future__ import annotations

from pydantic import Field, PostgresDsn, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

SETTINGS_CONFIG = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)


class DatabaseSettings(BaseSettings):
    """What every command that touches the database needs."""

    model_config = SETTINGS_CONFIG

    database_url: PostgresDsn = Field(
        description="Postgres connection string; on Supabase: Project Settings > Database > "
        "Connection string (direct or session pooler, port 5432: LISTEN needs a session)",
    )


def configuration_errors(error: ValidationError) -> list[str]:
    """One line per bad variable: its name, what is wrong, and where to find the right value."""
    fields: dict[str, FieldInfo] = {}
    for model in _all_subclasses(BaseSettings):
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


def _all_subclasses(model: type[BaseSettings]) -> list[type[BaseSettings]]:
    return [model, *(sub for child in model.__subclasses__() for sub in _all_subclasses(child))]


def comma_list(value: str) -> list[str]:
    """An environment variable's "a, b" as ["a", "b"]."""
    return [item.strip() for item in value.split(",") if item.strip()]
