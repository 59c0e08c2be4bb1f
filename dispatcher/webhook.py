"""RunPod's completion webhook: per-job URLs carrying an unguessable token.

RunPod signs nothing, so the URL itself is the credential: it names the job and
the submission (a number that never repeats for the job, not even across a
requeue), and carries an HMAC of both under the deployment's secret. A forged
call fails the HMAC; an older submission's URL is refused by the job's runner
(core.Dispatcher.deliver_webhook); a replayed one finds its job already finished
and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from uuid import UUID


def webhook_token(secret: str, job_id: UUID, submission: int) -> str:
    message = f"{job_id}:{submission}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:40]


def webhook_url(public_url: str, secret: str, job_id: UUID, submission: int) -> str:
    token = webhook_token(secret, job_id, submission)
    return f"{public_url.rstrip('/')}/runpod/webhook/{job_id}/{submission}?token={token}"


def token_is_valid(secret: str, job_id: UUID, submission: int, token: str) -> bool:
    return hmac.compare_digest(webhook_token(secret, job_id, submission), token)
