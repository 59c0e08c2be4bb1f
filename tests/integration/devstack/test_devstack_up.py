"""``zimage devstack up`` as a user runs it: a foreground process whose exports configure the clients."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
import runpod

from devstack.png import solid_png
from tests.integration.devstack.running import running_devstack

EXPECTED = {
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_ANON_KEY",
    "SUPABASE_JWT_SECRET",
    "RUNPOD_API_KEY",
    "RUNPOD_ENDPOINT_ID",
    "RUNPOD_ENDPOINT_BASE_URL",
}


def port_open(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parsed.hostname or "", parsed.port or 0)) == 0


@pytest.fixture
def devstack_up() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    with running_devstack() as running:
        yield running


def test_up_prints_exports_serves_the_official_clients_and_stops_cleanly(
    devstack_up: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    process, exports = devstack_up
    assert set(exports) == EXPECTED
    urls = [
        exports["SUPABASE_URL"],
        exports["RUNPOD_ENDPOINT_BASE_URL"],
        exports["DATABASE_URL"].replace("postgresql://postgres@", "tcp://"),
    ]
    assert all(urlparse(url).hostname == "127.0.0.1" for url in urls), "nothing listens beyond loopback"

    endpoint = runpod.Endpoint(exports["RUNPOD_ENDPOINT_ID"], api_key=exports["RUNPOD_API_KEY"])
    endpoint.rp_client.endpoint_url_base = exports["RUNPOD_ENDPOINT_BASE_URL"]
    output = endpoint.run_sync({"input": {"prompt": "a longbow", "aspectRatio": "1:1"}}, timeout=30)
    assert (output["width"], output["height"]) == (1024, 1024)

    upload = httpx.post(
        f"{exports['SUPABASE_URL']}/storage/v1/object/generated-assets/generated-images/t.png",
        content=solid_png(8, 8),
        headers={
            "Authorization": f"Bearer {exports['SUPABASE_SERVICE_ROLE_KEY']}",
            "Content-Type": "image/png",
        },
    )
    assert upload.status_code == 200, "the migrations' bucket is served"

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    assert "devstack: stopped" in process.stderr.read()
    assert not any(port_open(url) for url in urls), "a port (Postgres, RunPod or Storage) is still listening"
