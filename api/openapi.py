"""The OpenAPI 3.1 document of the functions, served at /functions/v1/openapi.json.

Each function module declares its operation (``OPENAPI``: parameters, body, answers) beside
the code that implements it; the shared shapes are here. The generate-images body's schema is
built from the very constants its validation uses (api/batches.py, worker/request.py), so the
document and the checks cannot drift apart on the enums and bounds; tests run schemathesis
over the whole document against the running app (no 5xx, every answer as documented).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

ERROR = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {"success": {"const": False}, "error": {"type": "string"}},
}
LINKS = {
    "type": "object",
    "required": ["batch_id", "status_url", "events_url", "cancel_url"],
    "properties": {
        "batch_id": {"type": "string", "format": "uuid"},
        "status_url": {"type": "string"},
        "events_url": {"type": "string"},
        "cancel_url": {"type": "string"},
    },
}
COMPLETE = {
    "type": "object",
    "required": ["success", "images", "total", "failed", "batch_id"],
    "properties": {
        "success": {"type": "boolean"},
        "images": {"type": "array", "items": {"type": "string"}},
        "total": {"type": "integer"},
        "failed": {"type": "integer"},
        "batch_id": {"type": "string", "format": "uuid"},
    },
}
NULLABLE_TEXT = {"type": ["string", "null"]}
BATCH_STATUS = {
    "type": "object",
    "required": ["batch_id", "total", "counts", "done", "jobs", "status_url", "events_url", "cancel_url"],
    "properties": {
        "batch_id": {"type": "string", "format": "uuid"},
        "user_id": {"type": ["string", "null"], "format": "uuid"},
        "total": {"type": "integer"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "done": {"type": "boolean"},
        "estimated_completion_at": NULLABLE_TEXT,
        "webhook": {"type": ["object", "null"]},
        "jobs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["job_id", "position", "status", "attempts"],
                "properties": {
                    "job_id": {"type": "string", "format": "uuid"},
                    "position": {"type": "integer"},
                    "status": {
                        "enum": ["queued", "submitted", "running", "succeeded", "failed", "cancelled"]
                    },
                    "url": NULLABLE_TEXT,
                    "error": NULLABLE_TEXT,
                    "attempts": {"type": "integer"},
                    "queue_position": {"type": ["integer", "null"]},
                    "estimated_start_at": NULLABLE_TEXT,
                    "estimated_finish_at": NULLABLE_TEXT,
                },
            },
        },
        "status_url": {"type": "string"},
        "events_url": {"type": "string"},
        "cancel_url": {"type": "string"},
    },
}
COMPONENTS = {
    "schemas": {
        "Error": ERROR,
        "Links": LINKS,
        "Complete": COMPLETE,
        "BatchStatus": BATCH_STATUS,
    },
    "securitySchemes": {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "a Supabase access token, the anon key, or the service-role key (an admin)",
        }
    },
}
EVENT_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}


def json_answer(description: str, schema: str = "Error") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def errors(*statuses: int) -> dict[str, Any]:
    """The error answers an operation can give, each ``{success: false, error}``."""
    meaning = {
        400: "a bad request: the message names the field",
        401: "no token, or one that is not valid",
        403: "the caller may not do this (another user's batch, not an admin)",
        404: "no such batch or job",
        413: "the body is larger than MAX_BODY_BYTES",
        422: "the Idempotency-Key was used with another body",
        429: "too many requests: see Retry-After",
    }
    return {str(status): json_answer(meaning[status]) for status in statuses}


def document(functions: dict[str, ModuleType], version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for name, module in functions.items():
        operations = getattr(module, "OPENAPI", None)
        if operations:
            paths[f"/functions/v1/{name}"] = operations
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HistoryGen image pipeline",
            "version": version,
            "description": "The HTTP functions in front of the image pipeline: submit batches, follow and "
            "cancel them. Errors are always JSON: {success: false, error}.",
        },
        "paths": paths,
        "components": COMPONENTS,
        "security": [{"bearer": []}],
    }
