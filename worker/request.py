"""Validating a job's input into a GenerationRequest. Strict: unknown keys and wrong types are refused."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from worker.errors import InvalidInput
from worker.text import strip_blank

QUALITY_STEPS = {"basic": 9, "high": 16}
ASPECT_RATIO_SIZES = {"16:9": (1024, 576), "1:1": (1024, 1024), "9:16": (576, 1024)}
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
SIZE_MULTIPLE, MIN_SIDE, MAX_SIDE = 16, 256, 2048
GUIDANCE_SCALE = 0.0  # Z-Image-Turbo is distilled for guidance-free sampling

_KNOWN_KEYS = frozenset({"prompt", "quality", "aspectRatio", "seed", "width", "height"})


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    steps: int
    width: int
    height: int
    seed: int


def parse_request(raw: Any) -> GenerationRequest:
    """Turn a RunPod job's ``input`` into a request, or raise InvalidInput naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"input: must be an object, got {type(raw).__name__}")
    if unknown := sorted(set(raw) - _KNOWN_KEYS):
        raise InvalidInput(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(_KNOWN_KEYS))})")
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
    )


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
    if value not in allowed or not isinstance(value, str):
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
