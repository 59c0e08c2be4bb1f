"""Outbound webhook targets and signatures: the address rule over whole address ranges, and
signatures that the standardwebhooks package (not our code) accepts, and only those."""

from __future__ import annotations

import base64
import ipaddress
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from kernel.webhook_signatures import secret_key, signature
from kernel.webhook_targets import address_problem, url_problem

NOT_PUBLIC = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
]


@given(network=st.sampled_from(NOT_PUBLIC), offset=st.integers(min_value=0))
def test_no_address_of_a_non_public_range_is_allowed(network: str, offset: int) -> None:
    net = ipaddress.ip_network(network)
    address = net[offset % net.num_addresses]
    assert address_problem(str(address)) is not None
    if address.version == 4:  # nor its IPv4-mapped IPv6 spelling
        assert address_problem(f"::ffff:{address}") is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(address) is None


def test_urls_are_judged_without_dns_and_allowed_hosts_relax_the_rule() -> None:
    allowed = frozenset({"receiver.internal", "10.0.0.5"})
    assert url_problem("https://hooks.example.com/x?y=1", frozenset()) is None
    assert url_problem("http://receiver.internal:8080/x", allowed) is None
    assert url_problem("https://10.0.0.5/x", allowed) is None
    assert url_problem("https://10.0.0.6/x", allowed) == "10.0.0.6 is a private address"
    assert url_problem("http://hooks.example.com/x", frozenset()) is not None
    assert url_problem("https://hooks.example.com/" + "x" * 2100, frozenset()) is not None
    assert url_problem("https://hooks.example.com/a b", frozenset()) is not None


@given(
    text=st.text(max_size=200),
    message_id=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=20),
)
def test_signatures_verify_with_the_standardwebhooks_package(text: str, message_id: str) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    # as the dispatcher writes bodies: compact JSON, UTF-8, non-ASCII as it is
    body = json.dumps({"type": "image", "text": text}, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret_key(secret), message_id, timestamp, body),
    }
    verifier = Webhook(secret)
    verifier.verify(body, headers)  # the package checks the bytes exactly as we signed them
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body, {**headers, "webhook-id": message_id + "x"})


@pytest.mark.parametrize(
    "bad", ["k" * 40, "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_a_malformed_secret_is_refused_without_saying_it(bad: str) -> None:
    with pytest.raises(ValueError, match=r"whsec_|24 bytes") as caught:
        secret_key(bad)
    assert bad not in str(caught.value)
