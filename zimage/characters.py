"""``zimage characters add | list | remove``: the character registry, as an operator keeps it.

A character is a row of ``characters`` and its LoRA adapter, a .safetensors file in the
private ``character-adapters`` bucket. Adding one uploads the file (only the service role may
write that bucket) under the owner's folder, keyed by the character's id and the file's hash,
then inserts the row; removing one deletes the row, then the file. Users see their own and the
shared characters (row level security) and name them by id in their batches.

Reads DATABASE_URL, SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import struct
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import Field, SecretStr

from kernel.queries import load_queries
from kernel.settings import DatabaseSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
QUERIES = load_queries(Path(__file__).parent / "sql" / "characters.sql")
MAX_ADAPTER_BYTES = 512 * 1024 * 1024  # the bucket's limit (migration 20261202000900)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own bound on its JSON header


class CharacterSettings(DatabaseSettings):
    supabase_url: str = Field(description="Project URL; Supabase: Project Settings > API")
    supabase_service_role_key: SecretStr = Field(
        description="service_role key (server side only); Supabase: Project Settings > API"
    )
    adapter_bucket: str = "character-adapters"


class CharacterError(Exception):
    """A request the registry refuses; the message says why."""


@dataclass(frozen=True)
class NewCharacter:
    owner: str  # a user id, or an email address of auth.users
    name: str
    adapter: Path
    trigger_phrase: str | None = None
    default_weight: float = 1.0
    shared: bool = False


def check_adapter(path: Path) -> tuple[bytes, int]:
    """The file's bytes and tensor count, if it is a safetensors file of a LoRA: refused here,
    with a reason, rather than failing every job that would use it."""
    data = path.read_bytes()
    if len(data) > MAX_ADAPTER_BYTES:
        raise CharacterError(f"{path}: {len(data)} bytes, over the bucket's limit of {MAX_ADAPTER_BYTES}")
    if len(data) < 8:
        raise CharacterError(f"{path}: not a safetensors file (too short)")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CharacterError(f"{path}: not a safetensors file (bad header size)")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except ValueError:
        raise CharacterError(f"{path}: not a safetensors file (its header is not JSON)") from None
    tensors = [key for key in header if key != "__metadata__"] if isinstance(header, dict) else []
    if not any("lora" in key for key in tensors):
        raise CharacterError(f"{path}: holds no LoRA weights (no tensor named lora_*)")
    return data, len(tensors)


def add_character(settings: CharacterSettings, new: NewCharacter) -> dict[str, Any]:
    data, _ = check_adapter(new.adapter)
    sha256 = hashlib.sha256(data).hexdigest()
    with psycopg.connect(str(settings.database_url), autocommit=True, row_factory=dict_row) as conn:
        owner = conn.execute(QUERIES["find_user"], {"user": new.owner}).fetchone()
        if owner is None:
            raise CharacterError(f"--owner {new.owner}: no such user (give a user id or an email address)")
        character_id = uuid.uuid4()
        path = f"{owner['id']}/{character_id}-{sha256[:12]}.safetensors"
        with _bucket(settings) as bucket:
            bucket.upload(path, data, {"content-type": "application/octet-stream"})
        try:
            row = conn.execute(
                QUERIES["insert"],
                {
                    "id": character_id,
                    "owner_id": owner["id"],
                    "name": new.name,
                    "trigger_phrase": new.trigger_phrase,
                    "adapter_path": path,
                    "adapter_sha256": sha256,
                    "adapter_bytes": len(data),
                    "default_weight": new.default_weight,
                    "shared": new.shared,
                },
            ).fetchone()
        except (psycopg.errors.UniqueViolation, psycopg.errors.CheckViolation) as error:
            with _bucket(settings) as bucket:
                bucket.remove([path])
            if isinstance(error, psycopg.errors.UniqueViolation):
                raise CharacterError(f"{new.owner} already has a character named {new.name!r}") from None
            raise CharacterError(f"refused: {error.diag.message_primary}") from None
    assert row is not None
    return dict(row)


def list_characters(settings: CharacterSettings, owner: str | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(str(settings.database_url), autocommit=True, row_factory=dict_row) as conn:
        return [dict(row) for row in conn.execute(QUERIES["list"], {"owner": owner}).fetchall()]


def remove_character(settings: CharacterSettings, character_id: uuid.UUID) -> dict[str, Any]:
    """Delete the row, then its file. Jobs already queued with it fail for good when they are
    submitted (their adapter is no longer stored); finished jobs keep their images."""
    with psycopg.connect(str(settings.database_url), autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(QUERIES["delete"], {"id": character_id}).fetchone()
    if row is None:
        raise CharacterError(f"no character {character_id}")
    with _bucket(settings) as bucket:
        bucket.remove([row["adapter_path"]])
    return dict(row)


@contextlib.contextmanager
def _bucket(settings: CharacterSettings) -> Iterator[Any]:
    """The adapters' bucket through storage3, as the service role."""
    import httpx
    from storage3 import SyncStorageClient

    key = settings.supabase_service_role_key.get_secret_value()
    headers = {"Authorization": f"Bearer {key}", "apikey": key}
    with httpx.Client(timeout=120) as http:
        url = f"{settings.supabase_url.rstrip('/')}/storage/v1/"
        yield SyncStorageClient(url, headers, http_client=http).from_(settings.adapter_bucket)


# ---- the commands --------------------------------------------------------------------------
def add_character_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    characters = commands.add_parser(
        "characters",
        help="the character registry: LoRA adapters users name in their batches",
        description="Add, list and remove characters (LoRA adapters of Z-Image-Turbo's transformer). "
        "Reads DATABASE_URL, SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY.",
    )
    actions = characters.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", help="upload an adapter and register it", description="Prints the new row."
    )
    add.add_argument("name", help="the character's name, unique per owner (e.g. Napoleon)")
    add.add_argument(
        "--lora", type=Path, required=True, help="the adapter: a .safetensors file (at most 512 MiB)"
    )
    add.add_argument("--owner", required=True, help="the owning user: their id or email address")
    add.add_argument("--trigger", help="the trigger phrase put before each prompt that uses it")
    add.add_argument("--weight", type=float, default=1.0, help="the default weight, 0-2 (default 1)")
    add.add_argument("--shared", action="store_true", help="every user may use it (default: its owner only)")
    add.add_argument("--json", action="store_true", help="print one JSON object")
    add.set_defaults(run=_run_add)
    listing = actions.add_parser("list", help="the registered characters")
    listing.add_argument("--owner", help="only this user's (id or email)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(run=_run_list)
    remove = actions.add_parser("remove", help="delete a character and its adapter file")
    remove.add_argument("character_id", type=uuid.UUID)
    remove.set_defaults(run=_run_remove)


def _settings() -> CharacterSettings:
    return CharacterSettings()  # type: ignore[call-arg]  # filled from the environment


def _run_add(args: argparse.Namespace) -> int:
    new = NewCharacter(args.owner, args.name, args.lora, args.trigger, args.weight, args.shared)
    try:
        row = add_character(_settings(), new)
    except (CharacterError, OSError) as error:
        print(f"zimage characters add: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(row, default=str) if args.json else f"added {row['name']} ({row['id']})")
    return EXIT_OK


def _run_list(args: argparse.Namespace) -> int:
    rows = list_characters(_settings(), args.owner)
    if args.json:
        print(json.dumps(rows, default=str))
        return EXIT_OK
    for row in rows:
        trigger = f' trigger "{row["trigger_phrase"]}"' if row["trigger_phrase"] else ""
        scope = "shared" if row["shared"] else "private"
        print(
            f"{row['id']}  {row['name']}  {scope}, weight {row['default_weight']:g}{trigger}, {row['owner']}"
        )
    return EXIT_OK


def _run_remove(args: argparse.Namespace) -> int:
    try:
        row = remove_character(_settings(), args.character_id)
    except CharacterError as error:
        print(f"zimage characters remove: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"removed {row['name']} ({row['id']})")
    return EXIT_OK
