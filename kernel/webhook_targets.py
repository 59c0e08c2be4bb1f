"""Where an outbound webhook may go: one rule for the app (checking a batch's ``webhook`` when
it is submitted) and the dispatcher (checking every address again when it delivers, after DNS).

A target is an https URL with a host and no credentials, whose addresses are all public: not
loopback, private, link-local (where cloud metadata lives), shared, multicast or reserved.
Hosts in the deployment's allowed list (OUTBOUND_WEBHOOK_ALLOWED_HOSTS) skip the address check
and may use plain http: a receiver on the same network, or a test's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048


def allowed_hosts(listed: Iterable[str]) -> frozenset[str]:
    return frozenset(host.strip().lower() for host in listed if host.strip())


def address_problem(address: str) -> str | None:
    """Why a webhook may not connect to this IP address, or None for a public one."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("link-local (cloud metadata among them)", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved or not ip.is_global),
    ):
        if flag:
            return f"a {kind} address"
    return None


def url_problem(url: str, allowed: frozenset[str]) -> str | None:
    """Why this URL may not be a webhook target, judged without DNS; None if it may be."""
    if len(url) > MAX_URL_CHARS:
        return f"at most {MAX_URL_CHARS} characters"
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("https", "http") or not host:
        return "must be an https URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if any(c.isspace() for c in url):
        return "must not contain white space"
    if host in allowed:
        return None
    if parts.scheme != "https":
        return "must be https (plain http only to OUTBOUND_WEBHOOK_ALLOWED_HOSTS)"
    try:
        problem = address_problem(host.strip("[]"))
    except ValueError:
        return None  # a name: its addresses are checked when it is called
    return None if problem is None else f"{host} is {problem}"
