"""Tokens are verified properly (HS256 secret and JWKS keys, audience, expiry, signature), and
401/403 answers say why in a JSON body."""

from __future__ import annotations

import jwt
import pytest

from tests.integration.api.conftest import USER_A, USER_B, Api, ApiFactory

STATUS = "/functions/v1/batch-status"


async def status_with(api: Api, token: str | None, batch_id: str) -> tuple[int, str]:
    async with api.client(token) as client:
        response = await client.get(STATUS, params={"batch_id": batch_id})
    return response.status_code, response.json().get("error", "")


def tampered(token: str) -> str:
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(
        {**claims, "sub": USER_B}, "not-the-projects-secret-but-long-enough", algorithm="HS256"
    ).split(".")[1]
    return ".".join([header, forged, signature])


@pytest.mark.parametrize(
    ("make_token", "message"),
    [
        (lambda api: None, "missing access token"),
        (lambda api: "not-a-jwt", "malformed access token"),
        (lambda api: api.token(ttl_s=-60), "access token expired"),
        (lambda api: api.token(aud="somebody-else"), "wrong audience"),
        (lambda api: tampered(api.token()), "signature is invalid"),
        (lambda api: api.keys.sign({"sub": USER_A, "aud": "authenticated"}), 'Token is missing the "exp"'),
        (
            lambda api: jwt.encode({"sub": USER_A, "aud": "authenticated", "exp": 2**40}, "x" * 64, "HS384"),
            "algorithm 'HS384' is not accepted",
        ),
    ],
    ids=["none", "malformed", "expired", "wrong-audience", "tampered", "no-expiry", "other-algorithm"],
)
async def test_bad_tokens_are_refused_with_the_reason(api: Api, make_token: object, message: str) -> None:
    batch_id = await api.submit(["The Great Fire of London"])
    status, error = await status_with(api, make_token(api), str(batch_id))  # type: ignore[operator]
    assert status == 401
    assert message in error


async def test_tokens_signed_with_the_projects_published_keys_are_accepted(api: Api) -> None:
    batch_id = await api.submit(["The Great Fire of London"])
    assert (await status_with(api, api.token(algorithm="ES256"), str(batch_id)))[0] == 200
    stranger = api.keys.__class__()  # a key pair the project does not publish
    status, error = await status_with(api, stranger.user_token(USER_A, algorithm="ES256"), str(batch_id))
    assert (status, error) == (401, "access token is signed with a key this project does not publish")


async def test_admins_are_the_service_role_key_and_the_admin_claim(api: Api) -> None:
    batch_id = await api.submit(["The Great Fire of London"])
    for token in (api.keys.service_role_key, api.token(USER_B, app_metadata={"role": "admin"})):
        assert (await status_with(api, token, str(batch_id)))[0] == 200
        async with api.client(token) as client:
            response = await client.post("/functions/v1/retry-failed", json={"batch_id": str(batch_id)})
        assert response.json() == {"requeued": 0}
    # a user retries their own failed jobs only, and never across users
    async with api.client(api.token(USER_B)) as client:
        response = await client.post("/functions/v1/retry-failed", json={"batch_id": str(batch_id)})
    assert response.status_code == 403
    assert response.json() == {"success": False, "error": f"batch {batch_id} is not yours"}
    async with api.client(api.token()) as client:
        own = await client.post("/functions/v1/retry-failed", json={"batch_id": str(batch_id)})
        across = await client.post(
            "/functions/v1/retry-failed", json={"failed_since": "2026-01-01T00:00:00Z"}
        )
    assert own.json() == {"requeued": 0}
    assert (across.status_code, across.json()["error"]) == (
        403,
        "failed_since: admins only (it reaches every user's jobs)",
    )


async def test_the_anon_key_is_accepted_only_when_the_deployment_allows_it(start_api: ApiFactory) -> None:
    for allowed in (True, False):
        async with start_api(allow_anon_key=allowed) as api, api.client(api.keys.anon_key) as client:
            response = await client.post(
                "/functions/v1/generate-images", json={"prompts": ["Stonehenge at dawn"], "wait": False}
            )
            assert response.status_code == (202 if allowed else 401), response.text
