"""Batches as the functions see them: a request parsed from the old edge function's body, inserted
as its caller (so RLS applies), and a batch's snapshot with queue positions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from api.auth import Caller
from api.errors import HttpError
from api.estimates import UNFINISHED, estimation_inputs, with_estimates
from api.idempotency import IdempotencyKey
from api.queries import QUERIES
from kernel.db import act_as_user
from kernel.webhook_targets import MAX_URL_CHARS, url_problem
from worker.request import (
    ASPECT_RATIO_SIZES,
    FORMATS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    QUALITY_STEPS,
)

# The database names its columns; the frontend's body names them in camelCase.
_BODY_NAMES = {"aspect_ratio": "aspectRatio", "project_id": "projectId"}
_FIELD = re.compile(r"^(\w+)")
_TIMING = re.compile(r"^timings\b")  # the body has no timings: they come with its prompts
# nor prompt_characters: each prompt's character comes with it
_PROMPT_CHARACTER = re.compile(r"^prompt_characters(?:\[(\d+)\](?:\.(id|weight))?)?")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_CHARACTER_WEIGHT = 2.0  # the database's rule too (image_batches_validate_characters)
WEBHOOK_EVENTS = ("image", "failed", "complete")
WEBHOOK_STATES = ("pending", "delivered", "failed")


MAX_PROMPTS = 100  # the database's rule too (image_batches_validate)
# not blank: some character that is not white space (zero-width ones are blank too: see worker/text.py)
_PROMPT = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": "\\S"}
_CHARACTER_ID = {"type": "string", "format": "uuid", "description": "a character you own, or a shared one"}
_CHARACTER_WEIGHT = {
    "type": "number",
    "minimum": 0,
    "maximum": MAX_CHARACTER_WEIGHT,
    "description": "the adapter's strength; default: the character's",
}
# generate-images' body, for the OpenAPI document: built from what from_body and the database
# check, so the two cannot disagree on a name, an enum or a bound.
BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompts"],
    "properties": {
        "prompts": {
            "oneOf": [
                {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": _PROMPT},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_PROMPTS,
                    "items": {
                        "type": "object",
                        "required": ["prompt"],
                        "properties": {
                            "prompt": _PROMPT,
                            "index": {"type": "integer", "minimum": 0, "maximum": 99999},
                            "startTime": {"type": "number", "minimum": 0, "maximum": 1000000},
                            "endTime": {"type": "number", "minimum": 0, "maximum": 1000000},
                            "character_id": _CHARACTER_ID,
                            "character_weight": _CHARACTER_WEIGHT,
                        },
                        "dependentRequired": {
                            "startTime": ["endTime"],
                            "endTime": ["startTime"],
                            "index": ["startTime", "endTime"],
                            "character_weight": ["character_id"],
                        },
                    },
                },
            ],
            "description": "one image per prompt; timed prompts make the old edge function's keys "
            "(all timed or none); a prompt's character_id overrides the batch's",
        },
        "character_id": _CHARACTER_ID,
        "character_weight": _CHARACTER_WEIGHT,
        "quality": {"enum": list(QUALITY_STEPS), "default": "basic"},
        "aspectRatio": {"enum": list(ASPECT_RATIO_SIZES), "default": "16:9"},
        "projectId": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        "format": {"enum": list(FORMATS), "default": "png"},
        "output_quality": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "description": "webp and jpeg only",
        },
        "webhook": {
            "type": "string",
            "format": "uri",
            "pattern": "^https://",
            "maxLength": MAX_URL_CHARS,
            "description": "an https URL to a public address, called with the events",
        },
        "webhook_events": {
            "type": "array",
            "minItems": 1,
            "items": {"enum": list(WEBHOOK_EVENTS)},
            "default": ["complete"],
        },
        "stream": {"type": "boolean", "description": "answer the batch's progress as SSE"},
        "wait": {"type": "boolean", "description": "false: answer 202 with the links at once"},
    },
    "dependentRequired": {
        "webhook_events": ["webhook"],
        "output_quality": ["format"],
        "character_weight": ["character_id"],
    },
    "if": {"properties": {"format": {"const": "png"}}, "required": ["format"]},
    "then": {"not": {"required": ["output_quality"]}},
}


@dataclass(frozen=True)
class BatchRequest:
    prompts: list[str]
    quality: str = "basic"
    aspect_ratio: str = "16:9"
    project_id: str | None = None
    seed: int | None = None
    timings: list[dict[str, Any]] | None = None  # per prompt {index, startTime, endTime}
    format: str = "png"  # png | webp | jpeg
    output_quality: int | None = None  # webp and jpeg: 1-100 (the database's default: 90)
    webhook: str | None = None  # called with the batch's events (dispatcher/outbound.py)
    webhook_events: list[str] | None = None  # image, failed, complete; the database's default: complete
    character_id: str | None = None  # every prompt's character, unless the prompt names its own
    character_weight: float | None = None
    prompt_characters: list[dict[str, Any] | None] | None = None  # per prompt: null or {id, weight}

    @classmethod
    def from_body(cls, body: dict[str, Any], webhook_hosts: frozenset[str] = frozenset()) -> BatchRequest:
        """Shapes and types here; the values' rules are the database's (one set of rules, one place),
        but for the webhook's target, which depends on the deployment's allowed hosts."""
        prompts = body.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise HttpError(
                400, "prompts: a non-empty list of strings or of {index, prompt, startTime, endTime}"
            )
        timings: list[dict[str, Any]] | None = None
        characters: list[dict[str, Any] | None] | None = None
        if all(isinstance(p, dict) for p in prompts):
            for i, item in enumerate(prompts):
                if not isinstance(item.get("prompt"), str):
                    raise HttpError(400, f"prompts[{i}].prompt: must be a string")
            # Timed prompts are all timed (the old function's keys number them all); the
            # database says which timing is wrong.
            if any(key in item for item in prompts for key in _TIMING_KEYS):
                timings = [
                    {key: item.get(key, i if key == "index" else None) for key in _TIMING_KEYS}
                    for i, item in enumerate(prompts)
                ]
            entries = [_prompt_character(item, f"prompts[{i}].") for i, item in enumerate(prompts)]
            characters = entries if any(entries) else None
            texts = [item["prompt"] for item in prompts]
        elif all(isinstance(p, str) for p in prompts):
            texts = list(prompts)
        else:
            raise HttpError(
                400, "prompts: all strings, or all {prompt, index, startTime, endTime, character_id} objects"
            )
        character = _prompt_character(body, "")
        return cls(
            prompts=texts,
            quality=_string(body, "quality", "basic"),
            aspect_ratio=_string(body, "aspectRatio", "16:9"),
            project_id=_optional_string(body, "projectId"),
            seed=_optional_seed(body),
            timings=timings,
            format=_string(body, "format", "png"),
            output_quality=_optional_integer(body, "output_quality"),
            webhook=_webhook(body, webhook_hosts),
            webhook_events=_webhook_events(body),
            character_id=character["id"] if character else None,
            character_weight=character.get("weight") if character else None,
            prompt_characters=characters,
        )


_TIMING_KEYS = ("index", "startTime", "endTime")


def _prompt_character(item: dict[str, Any], where: str) -> dict[str, Any] | None:
    """{id, weight} from an object's character_id and character_weight, or None. Shapes only:
    whether the caller may use it, and the weight's range, are the database's rules."""
    character_id, weight = item.get("character_id"), item.get("character_weight")
    if character_id is None:
        if weight is not None:
            raise HttpError(400, f"{where}character_weight: applies only with a character_id")
        return None
    if not isinstance(character_id, str) or not _UUID.match(character_id):
        raise HttpError(400, f"{where}character_id: must be a character id (a UUID)")
    if weight is None:
        return {"id": character_id.lower()}
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise HttpError(400, f"{where}character_weight: must be a number")
    if not 0 <= weight <= MAX_CHARACTER_WEIGHT:  # before Postgres: a float4 holds no 1e300
        raise HttpError(400, f"{where}character_weight: must be between 0 and {MAX_CHARACTER_WEIGHT:g}")
    return {"id": character_id.lower(), "weight": float(weight)}


def _string(body: dict[str, Any], name: str, default: str) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise HttpError(400, f"{name}: must be a string")
    return value


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise HttpError(400, f"{name}: must be a string")
    return value or None


def _webhook(body: dict[str, Any], hosts: frozenset[str]) -> str | None:
    url = _optional_string(body, "webhook")
    if url is not None and (problem := url_problem(url, hosts)) is not None:
        raise HttpError(400, f"webhook: {problem}")
    return url


def _webhook_events(body: dict[str, Any]) -> list[str] | None:
    events = body.get("webhook_events")
    if events is None:
        return None
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise HttpError(400, "webhook_events: a non-empty list of event types")
    if unknown := sorted(set(events) - set(WEBHOOK_EVENTS)):
        raise HttpError(400, f"webhook_events: {unknown[0]!r} is not one of {', '.join(WEBHOOK_EVENTS)}")
    if "webhook" not in body:
        raise HttpError(400, "webhook_events: give a webhook to send them to")
    return sorted(set(events), key=WEBHOOK_EVENTS.index)


def _optional_integer(body: dict[str, Any], name: str) -> int | None:
    """An integer or nothing; its range is the database's rule. Bounded here only so that any
    JSON number reaches Postgres as a value its integer column can hold or refuse."""
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise HttpError(400, f"{name}: must be an integer")
    if value is not None and not -(2**31) <= value < 2**31:
        raise HttpError(400, f"{name}: out of range")
    return value


def _optional_seed(body: dict[str, Any]) -> int | None:
    value = body.get("seed")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise HttpError(400, "seed: must be an integer")
    if value is not None and not 0 <= value <= MAX_SEED:
        raise HttpError(400, f"seed: must be between 0 and {MAX_SEED}")
    return value


async def insert_batch(
    conn: psycopg.AsyncConnection[Any],
    caller: Caller,
    batch: BatchRequest,
    once: IdempotencyKey | None = None,
) -> tuple[UUID, bool]:
    """Insert the batch (its jobs follow by trigger) as the caller; users through RLS. Batches made
    with the anon or service-role key belong to no user. With an idempotency key already used
    with this body, nothing is inserted: (the batch it made, True)."""
    try:
        async with conn.transaction():
            if once is not None and (earlier := await once.claim(conn)) is not None:
                return earlier, True
            if caller.kind == "user" and caller.user_id is not None:
                await act_as_user(conn, caller.user_id)
            cursor = await conn.execute(
                QUERIES["insert_batch"],
                {
                    "user_id": caller.user_id if caller.kind == "user" else None,
                    "prompts": batch.prompts,
                    "quality": batch.quality,
                    "aspect_ratio": batch.aspect_ratio,
                    "project_id": batch.project_id,
                    "seed": batch.seed,
                    "timings": Jsonb(batch.timings) if batch.timings is not None else None,
                    "format": batch.format,
                    "output_quality": batch.output_quality,
                    "webhook": batch.webhook,
                    "webhook_events": batch.webhook_events,
                    "character_id": batch.character_id,
                    "character_weight": batch.character_weight,
                    "prompt_characters": Jsonb(batch.prompt_characters)
                    if batch.prompt_characters is not None
                    else None,
                },
            )
            row = await cursor.fetchone()
            if once is not None and row is not None:
                await conn.execute("reset role")  # the key's table is the app's, not the user's
                await once.record(conn, UUID(str(row[0])))
    except psycopg.errors.CheckViolation as exc:
        raise HttpError(400, _body_names(exc.diag.message_primary or str(exc))) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise HttpError(403, _body_names(exc.diag.message_primary or "not allowed")) from None
    except psycopg.errors.ForeignKeyViolation:
        # The token is valid but its user is gone (deleted, or another project's).
        raise HttpError(401, "the token's user does not exist in this project") from None
    except psycopg.errors.DataError as exc:  # a value the column's type cannot hold
        raise HttpError(400, f"a value cannot be stored: {exc.diag.message_primary}") from None
    assert row is not None
    return UUID(str(row[0])), False


def _body_names(message: str) -> str:
    message = _TIMING.sub("prompts", message, count=1)
    message = _PROMPT_CHARACTER.sub(_prompt_character_name, message, count=1)
    return _FIELD.sub(lambda m: _BODY_NAMES.get(m.group(1), m.group(1)), message, count=1)


def _prompt_character_name(match: re.Match[str]) -> str:
    """prompt_characters[3].weight as the body says it: prompts[3].character_weight."""
    index, part = match.group(1), match.group(2)
    if index is None:
        return "prompts"
    return f"prompts[{index}]" + {"id": ".character_id", "weight": ".character_weight"}.get(part or "", "")


async def batch_snapshot(conn: psycopg.AsyncConnection[Any], batch_id: UUID) -> dict[str, Any] | None:
    """Each job's state, URL or error and attempts, and, while it waits, its place in the queue."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(QUERIES["batch"], {"batch_id": batch_id})
        batch = await cursor.fetchone()
        if batch is None:
            return None
        await cursor.execute(QUERIES["batch_jobs"], {"batch_id": batch_id})
        jobs = await cursor.fetchall()
        deliveries: list[dict[str, Any]] = []
        if batch["webhook"] is not None:
            await cursor.execute(QUERIES["batch_webhook_deliveries"], {"batch_id": batch_id})
            deliveries = await cursor.fetchall()
        completion = None
        if any(job["status"] in UNFINISHED for job in jobs):

            async def query(name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
                await cursor.execute(QUERIES[name], params)
                return await cursor.fetchall()

            capacity, times = await estimation_inputs(query, jobs)
            completion = with_estimates(jobs, capacity, times, datetime.now(UTC))
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return {
        "batch_id": str(batch["id"]),
        "user_id": str(batch["user_id"]) if batch["user_id"] else None,
        "created_at": batch["created_at"].isoformat(),
        "quality": batch["quality"],
        "aspectRatio": batch["aspect_ratio"],
        "projectId": batch["project_id"],
        "format": batch["format"],
        "output_quality": batch["output_quality"],
        "character_id": str(batch["character_id"]) if batch["character_id"] else None,
        "character_weight": batch["character_weight"],
        "webhook": None
        if batch["webhook"] is None
        else {"url": batch["webhook"], "events": batch["webhook_events"], **_deliveries(deliveries)},
        "total": len(jobs),
        "counts": counts,
        "done": all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs),
        "jobs": [
            {
                "job_id": str(job["id"]),
                "position": job["position"],
                "prompt": job["prompt"],
                "character_id": str(job["character_id"]) if job["character_id"] else None,
                "status": job["status"],
                "url": job["image_url"],
                "error": job["error"],
                "attempts": job["attempts"],
                "max_attempts": job["max_attempts"],
                "queue_position": job["queue_position"],
                "progress": job["progress"] if job["status"] == "running" else None,
                "estimated_start_at": job.get("estimated_start_at"),
                "estimated_finish_at": job.get("estimated_finish_at"),
                "finished_at": job["finished_at"].isoformat() if job["finished_at"] else None,
            }
            for job in jobs
        ],
        "estimated_completion_at": completion.isoformat() if completion else None,
    }


def _deliveries(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The webhook's deliveries: how many by status, the latest attempt, and the next one due."""
    attempted = [row for row in rows if row["last_attempt_at"] is not None]
    last = max(attempted, key=lambda row: row["last_attempt_at"], default=None)
    due = [row["next_attempt_at"] for row in rows if row["status"] == "pending"]
    return {
        "deliveries": {status: sum(row["status"] == status for row in rows) for status in WEBHOOK_STATES},
        "last_attempt": None
        if last is None
        else {
            "at": last["last_attempt_at"].isoformat(),
            "type": last["type"],
            "attempts": last["attempts"],
            "status": last["last_status"],
            "error": last["last_error"],
        },
        "next_attempt_at": min(due).isoformat() if due else None,
    }
