"""The dispatcher's HTTP client (httpx over aiohttp) against raw sockets that misbehave on purpose.

What matters most is the error mapping: the RunPod client repeats a submit only on
"not sent" errors (ConnectError, ConnectTimeout), so an answer lost after the
request went out must never come back as one of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from devstack.postgres import free_port
from kernel.http import http_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Handler], Awaitable[str]]
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head, await reader.readexactly(length)


def answer(body: bytes, *headers: bytes) -> bytes:
    lines = [b"HTTP/1.1 200 OK", b"content-length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start raw servers; at the end, their connection handlers are cancelled and awaited."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(handler: Handler) -> str:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await handler(reader, writer)
            writer.close()

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers)
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_was_not_sent() -> None:
    async with http_client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{free_port()}/run", json={})


async def test_a_connection_closed_after_the_request_lost_the_answer(serve: Serve) -> None:
    requests = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.close()

    url = await serve(hang_up)
    async with http_client() as client:
        with pytest.raises(httpx.TransportError) as raised:
            await client.post(f"{url}/run", json={"input": {}})
    assert not isinstance(raised.value, NOT_SENT)
    assert requests == 1


async def test_a_silent_server_times_out_as_a_read(serve: Serve) -> None:
    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    url = await serve(say_nothing)
    async with http_client() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{url}/run", json={}, timeout=httpx.Timeout(1.0, read=0.2))


async def test_waiting_for_a_free_connection_times_out_as_not_sent(serve: Serve) -> None:
    seen = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        await read_request(reader)
        seen += 1
        await asyncio.sleep(1)
        writer.write(answer(b"{}"))
        await writer.drain()

    url = await serve(slow)
    async with http_client(max_connections=1) as client:
        first = asyncio.create_task(client.get(f"{url}/status/a"))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.ConnectTimeout):
            await client.post(f"{url}/run", json={}, timeout=httpx.Timeout(5.0, pool=0.2))
        assert (await first).status_code == 200
    assert seen == 1, "the second request never left"


async def test_bodies_headers_and_encodings_pass_through_unchanged(serve: Serve) -> None:
    received: list[tuple[bytes, bytes]] = []
    reply = b'{"status": "COMPLETED"}'

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                received.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(answer(gzip.compress(reply), b"content-encoding: gzip", b"x-seen: 1", b"x-seen: 2"))
            await writer.drain()

    url = await serve(echo)
    large = bytes(range(256)) * 12_000  # about 3 MB: aiohttp's large-body path, no warning
    async with http_client() as client:
        small = await client.get(f"{url}/object/a%2Fb.png?token=x%20y", headers={"Authorization": "Bearer k"})
        big = await client.post(f"{url}/upload", content=large, headers={"content-type": "image/png"})
    assert small.json() == big.json() == {"status": "COMPLETED"}
    assert small.headers.get_list("x-seen") == ["1", "2"]
    (head, _), (big_head, big_body) = received
    assert head.startswith(b"GET /object/a%2Fb.png?token=x%20y HTTP/1.1\r\n")
    assert b"\r\nauthorization: bearer k\r\n" in head.lower()
    assert big_body == large
    assert b"content-type: image/png" in big_head.lower()


async def test_behind_a_proxy_requests_go_through_it(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen.append(head.split(b"\r\n")[0])
        writer.write(answer(b'{"id": "rp-1"}'))
        await writer.drain()

    monkeypatch.setenv("HTTP_PROXY", await serve(proxy))
    async with http_client() as client:
        response = await client.post("http://runpod.invalid/v2/endpoint/run", json={})
    assert response.json() == {"id": "rp-1"}
    assert seen == [b"POST http://runpod.invalid/v2/endpoint/run HTTP/1.1"]
