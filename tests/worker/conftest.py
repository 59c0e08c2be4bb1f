"""Worker fixtures: the tiny offline Z-Image pipeline, built once, loaded once per session.

Importing torch and diffusers costs seconds per process, so the tests share
one loaded pipeline; the hub is never contacted (HF_HUB_OFFLINE is set before
huggingface_hub is imported).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest

from worker.handler import Handler, make_handler
from worker.pipeline import ImageGenerator
from worker.settings import WorkerSettings
from worker.tiny import build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-z-image")


@pytest.fixture(scope="session")
def generator(tiny_model: Path) -> ImageGenerator:
    return ImageGenerator.load(WorkerSettings(model_id=str(tiny_model)))


@pytest.fixture(scope="session")
def handler(generator: ImageGenerator) -> Handler:
    return make_handler(generator)
