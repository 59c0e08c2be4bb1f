"""Entry point: ``python -m worker`` on RunPod, in the container, in the local stack and for
``--test_input`` runs. The model loads before the SDK starts taking jobs, so a
model that cannot load crashes the worker at start-up, loudly, not at the first job.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
    )


def main() -> None:
    configure_logging()
    import runpod

    from worker.adapters import AdapterCache
    from worker.handler import make_handler
    from worker.pipeline import ImageGenerator
    from worker.settings import WorkerSettings

    settings = WorkerSettings.from_env(os.environ)
    generator = ImageGenerator.load(settings)
    handler = make_handler(
        generator,
        refresh_worker_on_oom=settings.refresh_worker_on_oom,
        report_progress=runpod.serverless.progress_update if settings.on_platform else None,
        adapter_cache=AdapterCache(settings.adapter_cache_dir, settings.lora_cache_bytes),
    )
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
