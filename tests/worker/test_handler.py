"""The real handler on the tiny pipeline: sizes, steps, PNGs, seeds, and the error contract."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from PIL import Image

from worker.handler import Handler, make_handler
from worker.pipeline import ImageGenerator
from worker.tiny import IM_START_ID, VOCABULARY_SIZE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(handler: Handler, **job_input: Any) -> dict[str, Any]:
    return handler({"id": "test-job", "input": job_input})


def decode(output: dict[str, Any]) -> Image.Image:
    png = base64.b64decode(output["image_base64"])
    assert png.startswith(PNG_SIGNATURE)
    return Image.open(io.BytesIO(png))


def test_the_tokenizer_is_the_one_we_built(generator: ImageGenerator) -> None:
    tokenizer = generator.pipe.tokenizer
    assert len(tokenizer) == VOCABULARY_SIZE
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == IM_START_ID


@pytest.mark.parametrize(
    ("quality", "aspect_ratio", "steps", "size"),
    [("basic", "16:9", 9, (1024, 576)), ("basic", "1:1", 9, (1024, 1024)), ("high", "9:16", 16, (576, 1024))],
)
def test_generates_a_png_of_the_requested_size_and_steps(
    handler: Handler,
    generator: ImageGenerator,
    quality: str,
    aspect_ratio: str,
    steps: int,
    size: tuple[int, int],
) -> None:
    calls: list[int] = []
    hook = generator.pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        output = run(
            handler, prompt="Hadrian's Wall at dawn", quality=quality, aspectRatio=aspect_ratio, seed=7
        )
    finally:
        hook.remove()
    assert "error" not in output, output
    image = decode(output)
    assert (image.format, image.size, image.mode) == ("PNG", size, "RGB")
    assert (output["width"], output["height"], output["steps"], output["seed"]) == (*size, steps, 7)
    assert len(calls) == steps, "one transformer pass per step: guidance 0 means no CFG pass"
    assert set(output["timings"]) == {"load_ms", "inference_ms", "encode_ms"}
    assert output["timings"]["inference_ms"] > 0


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(handler: Handler) -> None:
    first = run(handler, prompt="a Viking longship", aspectRatio="1:1", width=256, height=256, seed=1234)
    again = run(handler, prompt="a Viking longship", aspectRatio="1:1", width=256, height=256, seed=1234)
    other = run(handler, prompt="a Viking longship", aspectRatio="1:1", width=256, height=256, seed=1235)
    assert first["image_base64"] == again["image_base64"]
    assert first["image_base64"] != other["image_base64"]


def test_a_missing_seed_is_drawn_and_returned(handler: Handler) -> None:
    output = run(handler, prompt="a sundial", width=256, height=256)
    replay = run(handler, prompt="a sundial", width=256, height=256, seed=output["seed"])
    assert replay["image_base64"] == output["image_base64"]


def test_invalid_input_is_a_permanent_error_naming_the_field(handler: Handler) -> None:
    output = run(handler, prompt="a cat", quality="ultra")
    assert set(output) == {"error"}
    error = json.loads(output["error"])
    assert error == {
        "error_type": "invalid_input",
        "error_message": 'quality: must be one of "basic", "high", got \'ultra\'',
        "retryable": False,
    }


@pytest.fixture
def oom_once(generator: ImageGenerator) -> Iterator[None]:
    """Make the model itself raise a GPU out-of-memory error on its next forward pass."""
    raised: list[bool] = []

    def explode(*_: object) -> None:
        if not raised:
            raised.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    hook = generator.pipe.transformer.register_forward_pre_hook(explode)
    yield
    hook.remove()


@pytest.mark.usefixtures("oom_once")
def test_out_of_memory_is_retryable_recycles_the_worker_and_the_next_job_works(handler: Handler) -> None:
    failed = run(handler, prompt="the Colosseum", width=256, height=256, seed=3)
    assert failed["refresh_worker"] is True
    error = json.loads(failed["error"])
    assert (error["error_type"], error["retryable"]) == ("out_of_memory", True)
    assert "256x256" in error["error_message"]
    after = run(handler, prompt="the Colosseum", width=256, height=256, seed=3)
    assert "error" not in after
    assert decode(after).size == (256, 256)


@pytest.mark.usefixtures("oom_once")
def test_refresh_on_oom_can_be_turned_off(generator: ImageGenerator) -> None:
    output = run(make_handler(generator, refresh_worker_on_oom=False), prompt="x", width=256, height=256)
    assert "refresh_worker" not in output
    assert json.loads(output["error"])["retryable"] is True


def test_an_image_over_the_payload_limit_is_a_permanent_error(generator: ImageGenerator) -> None:
    small_limit = make_handler(generator, max_output_bytes=10_000)
    output = run(small_limit, prompt="the Great Wall", width=256, height=256, seed=1)
    error = json.loads(output["error"])
    assert (error["error_type"], error["retryable"]) == ("output_too_large", False)
    assert "256x256" in error["error_message"]


def test_progress_is_reported_from_the_first_step(generator: ImageGenerator) -> None:
    reports: list[tuple[str, dict[str, Any]]] = []
    reporting = make_handler(
        generator, report_progress=lambda job, progress: reports.append((job["id"], progress))
    )
    output = run(reporting, prompt="a clock tower", width=256, height=256, quality="high")
    assert "error" not in output
    first_job, first = reports[0]
    assert (first_job, first["step"], first["steps"]) == ("test-job", 1, 16)
    assert all(progress["elapsed_ms"] >= 0 and 1 <= progress["step"] <= 16 for _, progress in reports)
