"""Input validation of the worker: every rule, with the field named in the message."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.adapters import AdapterRequest
from worker.errors import InvalidInput, OutOfMemory
from worker.request import (
    FORMATS,
    KNOWN_KEYS,
    MAX_SEED,
    Delivery,
    parse_delivery,
    parse_job,
    parse_request,
)

SHA, URL = "ab" * 32, "https://storage.example/object/sign/character-adapters/a.safetensors?token=t"
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["png", "webp", "jpeg", "https://x/y", "a prompt"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


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
        ({"prompt": "a", "lora": "napoleon"}, "lora: must be an object {url, sha256, weight}, got str"),
        ({"prompt": "a", "lora": {"sha256": SHA}}, "lora.url: must be an http(s) URL"),
        (
            {"prompt": "a", "lora": {"url": "file:///etc/passwd", "sha256": SHA}},
            "lora.url: must be an http(s)",
        ),
        (
            {"prompt": "a", "lora": {"url": URL, "sha256": SHA.upper()}},
            "lora.sha256: must be the file's SHA-256",
        ),
        (
            {"prompt": "a", "lora": {"url": URL, "sha256": SHA[:-1]}},
            "lora.sha256: must be the file's SHA-256",
        ),
        (
            {"prompt": "a", "lora": {"url": URL, "sha256": SHA, "weight": "1"}},
            "lora.weight: must be a number",
        ),
        (
            {"prompt": "a", "lora": {"url": URL, "sha256": SHA, "weight": True}},
            "lora.weight: must be a number",
        ),
        (
            {"prompt": "a", "lora": {"url": URL, "sha256": SHA, "weight": 2.5}},
            "lora.weight: must be between 0",
        ),
        ({"prompt": "a", "lora": {"url": URL, "sha256": SHA, "scale": 1}}, "lora.scale: unknown field"),
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


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prompt": "a", "format": "gif"}, 'format: must be one of "png", "webp", "jpeg", got \'gif\''),
        ({"prompt": "a", "output_quality": 80}, "output_quality: applies to webp and jpeg only"),
        ({"prompt": "a", "format": "jpeg", "output_quality": 0}, "output_quality: must be between 1 and"),
        ({"prompt": "a", "format": "webp", "output_quality": 101}, "output_quality: must be between 1 and"),
        ({"prompt": "a", "format": "webp", "output_quality": 9.5}, "output_quality: must be an integer"),
        ({"prompt": "a", "upload_url": "https://s/x"}, "upload_url: give upload_url and storage_path"),
        ({"prompt": "a", "storage_path": "k.png"}, "upload_url: give upload_url and storage_path"),
        ({"prompt": "a", "upload_url": "file:///x", "storage_path": "k"}, "upload_url: must be an http"),
        ({"prompt": "a", "upload_url": "", "storage_path": "k"}, "upload_url: must be a non-empty string"),
        ({"prompt": "a", "upload_url": "https://s/x", "storage_path": 7}, "storage_path: must be a non-"),
    ],
)
def test_bad_delivery_is_refused_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_job(raw)
    assert str(caught.value).startswith(message)


def test_a_lora_is_parsed_with_weight_1_by_default() -> None:
    assert parse_request({"prompt": "a"}).lora is None
    assert parse_request({"prompt": "a", "lora": {"url": URL, "sha256": SHA}}).lora == AdapterRequest(
        URL, SHA, 1.0
    )
    assert parse_request({"prompt": "a", "lora": {"url": URL, "sha256": SHA, "weight": 0}}).lora.weight == 0.0  # type: ignore[union-attr]


def test_delivery_defaults_to_a_base64_png_and_lossy_formats_to_quality_90() -> None:
    assert parse_delivery({"prompt": "a"}) == Delivery("png", None, None, None)
    assert parse_delivery({"prompt": "a", "format": "jpeg"}).output_quality == 90
    webp = parse_delivery({"prompt": "a", "format": "webp", "output_quality": 40})
    assert (webp.output_quality, webp.content_type) == (40, "image/webp")


@given(st.dictionaries(st.sampled_from([*sorted(KNOWN_KEYS), "extra"]), JSON_VALUES, max_size=6))
def test_any_input_is_parsed_or_refused_with_invalid_input(raw: dict[str, Any]) -> None:
    try:
        request, delivery = parse_job(raw)
    except InvalidInput:
        return
    assert delivery.format in FORMATS
    assert (delivery.output_quality is None) == (delivery.format == "png")
    assert (delivery.upload_url is None) == (delivery.storage_path is None)
    assert request.prompt
