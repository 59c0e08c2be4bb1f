"""Signing outbound webhooks as the Standard Webhooks specification says
(https://www.standardwebhooks.com): a ``whsec_`` secret, and ``v1,`` with the base64
HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}``. Receivers verify with any Standard
Webhooks library (the tests use the ``standardwebhooks`` package)."""

from __future__ import annotations

import base64
import hashlib
import hmac


def secret_key(whsec: str) -> bytes:
    """The key in a Standard Webhooks secret (``whsec_`` and base64); ValueError if malformed."""
    if not whsec.startswith("whsec_"):
        raise ValueError("must start with whsec_")
    try:
        encoded = whsec.removeprefix("whsec_")
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)  # padding optional
    except ValueError:
        raise ValueError("must be whsec_ followed by base64") from None
    if len(key) < 24:
        raise ValueError("the key must be at least 24 bytes")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
