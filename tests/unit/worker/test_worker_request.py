"""Input validation of the worker: every rule, with the field named in the message."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import InvalidInput, OutOfMemory
from worker.request import MAX_SEED, parse_request


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a cat", "input: must be an object, got str"),
        ({}, "prompt: required"),
        ({"prompt": 42}, "prompt: must be a string, got int"),
        ({"prompt": "   "}, "prompt: must not be empty or blank"),
        ({"prompt": "x" * 1001}, "prompt: 1001 characters, the limit is 1000"),
        ({"prompt": "a\x00b"}, "prompt: must not contain a NUL character"),
        ({"prompt": "a", "quality": "ultra"}, 'quality: must be one of "basic", "high", got \'ultra\''),
        ({"prompt": "a", "quality": 9}, "quality: must be one of"),
        ({"prompt": "a", "aspectRatio": "4:3"}, 'aspectRatio: must be one of "16:9", "1:1", "9:16"'),
        ({"prompt": "a", "seed": -1}, "seed: must be between 0 and 4294967295, got -1"),
        ({"prompt": "a", "seed": MAX_SEED + 1}, "seed: must be between 0 and 4294967295"),
        ({"prompt": "a", "seed": "7"}, "seed: must be an integer, got str"),
        ({"prompt": "a", "seed": 1.5}, "seed: must be an integer, got float"),
        ({"prompt": "a", "seed": True}, "seed: must be an integer, got bool"),
        ({"prompt": "a", "width": 512}, "height: give width and height together"),
        ({"prompt": "a", "height": 512}, "width: give width and height together"),
        ({"prompt": "a", "width": 520, "height": 512}, "width: must be a multiple of 16, got 520"),
        ({"prompt": "a", "width": 512, "height": 2064}, "height: must be between 256 and 2048, got 2064"),
        ({"prompt": "a", "width": 240, "height": 512}, "width: must be between 256 and 2048, got 240"),
        ({"prompt": "a", "steps": 50}, "steps: unknown field"),
        ({"prompt": "a", "guidance_scale": 3.5}, "guidance_scale: unknown field"),
    ],
)
def test_bad_input_is_refused_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_request(raw)
    assert str(caught.value).startswith(message)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("quality", "aspect_ratio", "steps", "size"),
    [
        ("basic", "16:9", 9, (1024, 576)),
        ("basic", "1:1", 9, (1024, 1024)),
        ("high", "9:16", 16, (576, 1024)),
    ],
)
def test_quality_maps_to_steps_and_aspect_ratio_to_pixels(
    quality: str, aspect_ratio: str, steps: int, size: tuple[int, int]
) -> None:
    request = parse_request(
        {"prompt": "  a map  ", "quality": quality, "aspectRatio": aspect_ratio, "seed": 5}
    )
    assert (request.prompt, request.steps, (request.width, request.height), request.seed) == (
        "a map",
        steps,
        size,
        5,
    )


def test_defaults_are_basic_16_9_and_a_random_seed_in_range() -> None:
    seeds = {parse_request({"prompt": "a"}).seed for _ in range(20)}
    request = parse_request({"prompt": "a"})
    assert (request.steps, request.width, request.height) == (9, 1024, 576)
    assert all(0 <= seed <= MAX_SEED for seed in seeds)
    assert len(seeds) > 1


def test_explicit_width_and_height_override_the_aspect_ratio() -> None:
    request = parse_request({"prompt": "a", "aspectRatio": "1:1", "width": 768, "height": 512})
    assert (request.width, request.height) == (768, 512)


def test_error_contract_is_json_with_a_retryable_flag() -> None:
    assert InvalidInput("prompt: required").to_runpod_error() == (
        '{"error_type": "invalid_input", "error_message": "prompt: required", "retryable": false}'
    )
    assert '"retryable": true' in OutOfMemory("GPU out of memory").to_runpod_error()
