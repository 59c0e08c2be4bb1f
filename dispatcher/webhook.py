"""RunPod's completion webhook: per-job URLs carrying an unguessable token.

RunPod signs nothing, so the URL itself is the credential: it names the job and
the attempt, and carries an HMAC of both under the deployment's secret. A forged
call fails the HMAC; a replayed one finds its job already finished and changes
nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from uuid import UUID


def webhook_token(secret: str, job_id: UUID, attempt: int) -> str:
    message = f"{job_id}:{attempt}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:40]


def webhook_url(public_url: str, secret: str, job_id: UUID, attempt: int) -> str:
    token = webhook_token(secret, job_id, attempt)
    return f"{public_url.rstrip('/')}/runpod/webhook/{job_id}/{attempt}?token={token}"


def token_is_valid(secret: str, job_id: UUID, attempt: int, token: str) -> bool:
    return hmac.compare_digest(webhook_token(secret, job_id, attempt), token)
