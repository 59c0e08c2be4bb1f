"""Local stand-ins for a Supabase project's keys: a JWT secret generated per run, the anon and
service-role keys (and user access tokens) signed with it, as Supabase's legacy keys are, and an
ES256 signing key published as JWKS, as projects with asymmetric JWT keys have."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "supabase-local"
TEN_YEARS_S = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class LocalKeys:
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    signing_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()), repr=False
    )
    key_id: str = field(default_factory=lambda: secrets.token_hex(8))

    def sign(self, claims: dict[str, object], algorithm: str = "HS256") -> str:
        if algorithm == "ES256":
            return jwt.encode(claims, self.signing_key, algorithm="ES256", headers={"kid": self.key_id})
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def jwks(self) -> dict[str, object]:
        """The public half, as {SUPABASE_URL}/auth/v1/.well-known/jwks.json publishes it."""
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.signing_key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.key_id, "alg": "ES256", "use": "sig"}]}

    def api_key(self, role: str) -> str:
        now = int(time.time())
        return self.sign({"iss": ISSUER, "role": role, "iat": now, "exp": now + TEN_YEARS_S})

    @property
    def anon_key(self) -> str:
        return self.api_key("anon")

    @property
    def service_role_key(self) -> str:
        return self.api_key("service_role")

    def user_token(self, user_id: str, ttl_s: int = 3600, algorithm: str = "HS256", **claims: object) -> str:
        """An access token like the one supabase-js holds for a signed-in user."""
        now = int(time.time())
        return self.sign(
            {
                "iss": ISSUER,
                "sub": user_id,
                "aud": "authenticated",
                "role": "authenticated",
                "iat": now,
                "exp": now + ttl_s,
                **claims,
            },
            algorithm,
        )

    def claims_of(self, token: str) -> dict[str, object] | None:
        """The verified claims of a token signed with this secret, or None."""
        try:
            claims: dict[str, object] = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.PyJWTError:
            return None
        return claims

    def role_of(self, token: str) -> str | None:
        """The verified role claim of a token signed with this secret, or None."""
        role = (self.claims_of(token) or {}).get("role")
        return role if isinstance(role, str) else None
