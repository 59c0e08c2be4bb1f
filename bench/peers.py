"""The two systems this dispatcher replaced, written small from their description, so that
bench/regimes.py can run them side by side with it on the same RunPod stand-in.

- The old edge function: every job submitted at once, ``/status`` every 3 s, no retry of
  anything, gives up on a job after 5 minutes.
- The later render service: a rolling window of 4 jobs, ``/status`` every 2 s, up to 4
  retries (of a failed call, and of a job that failed).

Both store each image in the bucket as the dispatcher does (decode, upload), so "stored" means
the same for all three.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class PeerResult:
    stored_at: dict[int, float] = field(default_factory=dict)  # prompt index -> wall clock
    runpod_ids: dict[int, str] = field(default_factory=dict)  # prompt index -> its last RunPod job
    failed: set[int] = field(default_factory=set)


@dataclass
class Peer:
    runpod_url: str  # .../v2/{endpoint}
    runpod_key: str
    storage_url: str  # .../storage/v1
    service_key: str
    poll_interval_s: float
    window: int | None  # jobs in flight at once; None: all
    retries: int
    give_up_s: float = 300.0

    async def run(self, prompts: list[str], result: PeerResult, offset: int = 0) -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            gate = asyncio.Semaphore(self.window or len(prompts))

            async def one(index: int, prompt: str) -> None:
                async with gate:
                    await self._job(http, offset + index, prompt, result)

            await asyncio.gather(*(one(index, prompt) for index, prompt in enumerate(prompts)))

    async def _job(self, http: httpx.AsyncClient, index: int, prompt: str, result: PeerResult) -> None:
        for _ in range(self.retries + 1):
            try:
                output = await self._generate(http, prompt, index, result)
                if output is None:
                    continue  # the job failed at RunPod: another attempt, if any are left
                png = base64.b64decode(output["image_base64"])
                await self._call(
                    http,
                    "POST",
                    f"{self.storage_url}/object/generated-assets/peers/{index}.png",
                    content=png,
                    headers={"content-type": "image/png", "x-upsert": "true", **self._storage_auth},
                )
                result.stored_at[index] = time.time()
                return
            except (httpx.HTTPError, KeyError, ValueError):
                continue
        result.failed.add(index)

    async def _generate(
        self, http: httpx.AsyncClient, prompt: str, index: int, result: PeerResult
    ) -> dict[str, Any] | None:
        answer = await self._call(http, "POST", f"{self.runpod_url}/run", json={"input": {"prompt": prompt}})
        job_id = result.runpod_ids[index] = answer.json()["id"]
        deadline = time.monotonic() + self.give_up_s
        while time.monotonic() < deadline:
            await asyncio.sleep(self.poll_interval_s)
            state = (await self._call(http, "GET", f"{self.runpod_url}/status/{job_id}")).json()
            if state["status"] == "COMPLETED":
                output: dict[str, Any] = state["output"]
                return output
            if state["status"] in ("FAILED", "CANCELLED", "TIMED_OUT"):
                return None
        return None

    async def _call(self, http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, retried (for the render service) on a transport error or a 429/5xx."""
        headers = kwargs.pop("headers", {"Authorization": f"Bearer {self.runpod_key}"})
        for attempt in range(self.retries + 1):
            try:
                response = await http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == self.retries:
                    response.raise_for_status()
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            response.raise_for_status()
            return response
        raise httpx.HTTPError("unreachable")

    @property
    def _storage_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service_key}", "apikey": self.service_key}


def old_edge_function(runpod_url: str, runpod_key: str, storage_url: str, service_key: str) -> Peer:
    return Peer(runpod_url, runpod_key, storage_url, service_key, poll_interval_s=3.0, window=None, retries=0)


def render_service(runpod_url: str, runpod_key: str, storage_url: str, service_key: str) -> Peer:
    return Peer(runpod_url, runpod_key, storage_url, service_key, poll_interval_s=2.0, window=4, retries=4)
