"""Worker fixtures: the tiny offline Z-Image pipeline, loaded once per session.

Importing torch and diffusers costs seconds per process, so the tests share
one loaded pipeline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.handler import Handler, make_handler
from worker.pipeline import ImageGenerator
from worker.settings import WorkerSettings


@pytest.fixture(scope="session")
def generator(tiny_model: Path) -> ImageGenerator:
    return ImageGenerator.load(WorkerSettings(model_id=str(tiny_model)))


@pytest.fixture(scope="session")
def handler(generator: ImageGenerator) -> Handler:
    return make_handler(generator)
