"""Validating a job's input into a GenerationRequest. Strict: unknown keys and wrong types are refused."""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from worker.adapters import AdapterRequest
from worker.errors import InvalidInput
from worker.text import strip_blank

QUALITY_STEPS = {"basic": 9, "high": 16}
ASPECT_RATIO_SIZES = {"16:9": (1024, 576), "1:1": (1024, 1024), "9:16": (576, 1024)}
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
SIZE_MULTIPLE, MIN_SIDE, MAX_SIDE = 16, 256, 2048
GUIDANCE_SCALE = 0.0  # Z-Image-Turbo is distilled for guidance-free sampling

FORMATS = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
DEFAULT_OUTPUT_QUALITY = 90  # for webp and jpeg, when none is asked for
MAX_URL_CHARS = 8192
MIN_ADAPTER_WEIGHT, MAX_ADAPTER_WEIGHT = 0.0, 2.0
_SHA256 = re.compile(r"[0-9a-f]{64}")

KNOWN_KEYS = frozenset(
    {
        "prompt",
        "quality",
        "aspectRatio",
        "seed",
        "width",
        "height",
        "format",
        "output_quality",
        "upload_url",
        "storage_path",
        "lora",
    }
)
LORA_KEYS = frozenset({"url", "sha256", "weight"})


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    steps: int
    width: int
    height: int
    seed: int
    lora: AdapterRequest | None = None  # a character's adapter; None: the base model


@dataclass(frozen=True)
class Delivery:
    """How the image leaves the worker: encoded as ``format`` and either uploaded to a signed
    Storage URL (``upload_url``, for the key ``storage_path``) or, without one, returned as
    base64 in the result (an old dispatcher, the Hub tests, test_input.json)."""

    format: str = "png"
    output_quality: int | None = None  # webp and jpeg: 1-100
    upload_url: str | None = None
    storage_path: str | None = None

    @property
    def content_type(self) -> str:
        return FORMATS[self.format]


def parse_job(raw: Any) -> tuple[GenerationRequest, Delivery]:
    """A RunPod job's ``input`` as what to generate and how to deliver it; InvalidInput names
    the field."""
    return parse_request(raw), parse_delivery(raw)


def parse_request(raw: Any) -> GenerationRequest:
    """Turn a RunPod job's ``input`` into a request, or raise InvalidInput naming the field."""
    _check_keys(raw)
    quality = _choice(raw, "quality", QUALITY_STEPS, default="basic")
    aspect_ratio = _choice(raw, "aspectRatio", ASPECT_RATIO_SIZES, default="16:9")
    width, height = _size(raw) or ASPECT_RATIO_SIZES[aspect_ratio]
    seed = _integer(raw, "seed", 0, MAX_SEED)
    return GenerationRequest(
        prompt=_prompt(raw),
        steps=QUALITY_STEPS[quality],
        width=width,
        height=height,
        seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
        lora=_lora(raw.get("lora")),
    )


def parse_delivery(raw: Any) -> Delivery:
    _check_keys(raw)
    image_format = _choice(raw, "format", FORMATS, default="png")
    output_quality = _integer(raw, "output_quality", 1, 100)
    if image_format == "png" and output_quality is not None:
        raise InvalidInput("output_quality: applies to webp and jpeg only (png is lossless)")
    upload_url, storage_path = _text(raw, "upload_url"), _text(raw, "storage_path")
    if (upload_url is None) != (storage_path is None):
        raise InvalidInput("upload_url: give upload_url and storage_path together")
    if upload_url is not None and not upload_url.startswith(("https://", "http://")):
        raise InvalidInput("upload_url: must be an http(s) URL")
    return Delivery(
        format=image_format,
        output_quality=None if image_format == "png" else output_quality or DEFAULT_OUTPUT_QUALITY,
        upload_url=upload_url,
        storage_path=storage_path,
    )


def _check_keys(raw: Any) -> None:
    if not isinstance(raw, dict):
        raise InvalidInput(f"input: must be an object, got {type(raw).__name__}")
    if unknown := sorted(set(raw) - KNOWN_KEYS):
        raise InvalidInput(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(KNOWN_KEYS))})")


def _text(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise InvalidInput(f"{key}: must be a non-empty string of at most {MAX_URL_CHARS} characters")
    return value


def _lora(raw: Any) -> AdapterRequest | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidInput(f"lora: must be an object {{url, sha256, weight}}, got {type(raw).__name__}")
    if unknown := sorted(set(raw) - LORA_KEYS):
        raise InvalidInput(f"lora.{unknown[0]}: unknown field (allowed: sha256, url, weight)")
    url, sha256 = raw.get("url"), raw.get("sha256")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > MAX_URL_CHARS:
        raise InvalidInput(f"lora.url: must be an http(s) URL of at most {MAX_URL_CHARS} characters")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise InvalidInput("lora.sha256: must be the file's SHA-256 as 64 lowercase hex digits")
    weight = raw.get("weight", 1.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight):
        raise InvalidInput(f"lora.weight: must be a number, got {type(weight).__name__}")
    if not MIN_ADAPTER_WEIGHT <= weight <= MAX_ADAPTER_WEIGHT:
        raise InvalidInput(
            f"lora.weight: must be between {MIN_ADAPTER_WEIGHT:g} and {MAX_ADAPTER_WEIGHT:g}, got {weight}"
        )
    return AdapterRequest(url=url, sha256=sha256, weight=float(weight))


def _prompt(raw: dict[str, Any]) -> str:
    if "prompt" not in raw:
        raise InvalidInput("prompt: required")
    prompt = raw["prompt"]
    if not isinstance(prompt, str):
        raise InvalidInput(f"prompt: must be a string, got {type(prompt).__name__}")
    prompt = strip_blank(prompt)
    if not prompt:
        raise InvalidInput("prompt: must not be empty or blank")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"prompt: {len(prompt)} characters, the limit is {MAX_PROMPT_CHARS}")
    if "\x00" in prompt:
        raise InvalidInput("prompt: must not contain a NUL character")
    return prompt


def _choice(raw: dict[str, Any], key: str, allowed: dict[str, Any], default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or value not in allowed:  # a list or dict is not hashable
        choices = ", ".join(f'"{choice}"' for choice in allowed)
        raise InvalidInput(f"{key}: must be one of {choices}, got {value!r}")
    return value


def _integer(raw: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    # bool is an int in Python, never in JSON
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{key}: must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidInput(f"{key}: must be between {low} and {high}, got {value}")
    return value


def _size(raw: dict[str, Any]) -> tuple[int, int] | None:
    width = _integer(raw, "width", MIN_SIDE, MAX_SIDE)
    height = _integer(raw, "height", MIN_SIDE, MAX_SIDE)
    if width is None and height is None:
        return None
    if width is None or height is None:
        raise InvalidInput(f"{'height' if width is not None else 'width'}: give width and height together")
    for key, value in (("width", width), ("height", height)):
        if value % SIZE_MULTIPLE:
            raise InvalidInput(f"{key}: must be a multiple of {SIZE_MULTIPLE}, got {value}")
    return width, height
