"""``Idempotency-Key`` on generate-images: the same key and body within 24 hours answers the
batch the first request made (same id), the same key with another body is refused (422).
Keys are per caller (a user, an admin, or an anon-key client address) and kept in Postgres,
written in the batch's own transaction, so every replica agrees and a client retrying after a
lost answer never pays twice."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from api.auth import Caller
from api.errors import HttpError
from api.queries import QUERIES

MAX_KEY_LENGTH = 255
_KEY_CHARACTERS = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")


@dataclass(frozen=True)
class IdempotencyKey:
    caller: str
    key: str
    body_sha256: str

    @classmethod
    def of(
        cls, header: str | None, caller: Caller, client_address: str, body: dict[str, Any]
    ) -> IdempotencyKey | None:
        if header is None:
            return None
        if not 1 <= len(header) <= MAX_KEY_LENGTH or not set(header) <= _KEY_CHARACTERS:
            raise HttpError(400, f"Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters")
        if caller.user_id is not None:
            who = f"user:{caller.user_id}"
        else:
            who = "admin" if caller.is_admin else f"anon:{client_address}"
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return cls(who, header, hashlib.sha256(canonical.encode()).hexdigest())

    @property
    def params(self) -> dict[str, str]:
        return {"caller": self.caller, "key": self.key, "body_sha256": self.body_sha256}

    async def claim(self, conn: psycopg.AsyncConnection[Any]) -> UUID | None:
        """In the batch's transaction, before it is inserted: None if this request is the key's
        first (it makes the batch), else the batch the first made. 422 for another body."""
        if await (await conn.execute(QUERIES["claim_idempotency_key"], self.params)).fetchone():
            return None
        row = await (await conn.execute(QUERIES["idempotency_key"], self.params)).fetchone()
        if row is None or row[1] is None:  # cannot be: a first use commits with its batch
            raise HttpError(409, "Idempotency-Key: its first request is still being handled; retry")
        if row[0] != self.body_sha256:
            raise HttpError(422, "Idempotency-Key: already used with another body")
        return UUID(str(row[1]))

    async def record(self, conn: psycopg.AsyncConnection[Any], batch_id: UUID) -> None:
        await conn.execute(QUERIES["record_idempotency_key"], {**self.params, "batch_id": batch_id})
