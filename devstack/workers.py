"""Real worker processes: ``python -m worker`` under the runpod SDK's own serverless loop,
pointed at the RunPod stand-in exactly as RunPod points it at its own platform."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import structlog

log = structlog.get_logger("devstack.workers")


class WorkerProcesses:
    def __init__(
        self, base_url: str, endpoint_id: str, worker_key: str, model_id: str, count: int, log_dir: Path
    ) -> None:
        self.base_url = base_url
        self.endpoint_id = endpoint_id
        self.worker_key = worker_key
        self.model_id = model_id
        self.count = count
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def environment(self, worker_id: str) -> dict[str, str]:
        endpoint = f"{self.base_url}/v2/{self.endpoint_id}"
        return {
            **os.environ,
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_AI_API_KEY": self.worker_key,
            # The SDK substitutes $ID / $RUNPOD_POD_ID and appends "&..." query parameters.
            "RUNPOD_WEBHOOK_GET_JOB": f"{endpoint}/job-take/$ID?gpu=local",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{endpoint}/job-done/$RUNPOD_POD_ID/$ID?gpu=local",
            "RUNPOD_WEBHOOK_PING": f"{endpoint}/ping/$RUNPOD_POD_ID?gpu=local",
            "RUNPOD_PING_INTERVAL": "5000",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",  # the checks dial out to the internet
            "MODEL_ID": self.model_id,
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        }

    def start(self) -> None:
        for index in range(self.count):
            self.spawn(f"worker-{index}")

    def spawn(self, worker_id: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{worker_id}.log", "ab") as output:
            self.processes[worker_id] = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                env=self.environment(worker_id),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the ping child dies too
            )
        log.info("worker.started", worker_id=worker_id, pid=self.processes[worker_id].pid)

    async def wait_until_ready(self, seen: Collection[str], timeout_s: float) -> None:
        """Ready means every worker has loaded its model and asked for a job (its id is in ``seen``,
        the platform's worker_seen); a worker that exits first fails loudly, naming its log."""
        deadline = time.monotonic() + timeout_s
        while not set(self.processes) <= set(seen):
            for worker_id, process in self.processes.items():
                if process.poll() is not None:
                    logfile = self.log_dir / f"{worker_id}.log"
                    raise RuntimeError(f"{worker_id} exited with {process.returncode}; see {logfile}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)

    def recycle(self, worker_id: str) -> None:
        """What RunPod does on stopPod (refresh_worker): the worker is replaced by a fresh one."""
        if worker_id in self.processes:
            self._kill(self.processes.pop(worker_id))
            self.spawn(worker_id)

    def kill(self, worker_id: str) -> None:
        """A worker dying mid-job, for tests: SIGKILL, no goodbye."""
        self._kill(self.processes.pop(worker_id), signal.SIGKILL)

    def stop(self) -> None:
        for process in self.processes.values():
            self._kill(process)
        self.processes.clear()

    @staticmethod
    def _kill(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
