"""Bytes per image by format: PNG (lossless, the default) against WebP and JPEG at a few
qualities, encoded exactly as the worker encodes them (worker/encoding.py), on two images:

- the tiny offline pipeline's output at 1024x576 (random weights: noise, the worst case for
  every codec, and what the tests store);
- a photograph: scikit-image's bundled "astronaut" (a 512x512 photo), resized to 1024x1024,
  standing for a generated photographic scene (``pip install scikit-image`` first; skipped
  without it).

Prints one JSON object on its last line.

    python bench/formats.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from worker.encoding import encode
from worker.request import Delivery, GenerationRequest

CHOICES = [("png", None), ("webp", 90), ("webp", 75), ("jpeg", 90), ("jpeg", 75)]


def sizes(image: Any) -> dict[str, dict[str, float]]:
    png = len(encode(image, Delivery()).data)
    results = {}
    for image_format, quality in CHOICES:
        encoded = encode(image, Delivery(format=image_format, output_quality=quality))
        name = image_format if quality is None else f"{image_format} q{quality}"
        results[name] = {
            "bytes": len(encoded.data),
            "saved_vs_png": round(1 - len(encoded.data) / png, 3),
            "encode_ms": round(encoded.encode_ms, 1),
        }
    return results


def tiny_pipeline_image() -> Any:
    from worker.pipeline import ImageGenerator
    from worker.settings import WorkerSettings
    from worker.tiny import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as directory:
        build_tiny_pipeline(Path(directory))
        generator = ImageGenerator.load(WorkerSettings(model_id=directory, warmup=False))
        request = GenerationRequest(prompt="the Colosseum at dusk", steps=9, width=1024, height=576, seed=1)
        return generator.generate(request).image


def photograph() -> Any | None:
    try:
        from skimage import data
    except ImportError:
        return None
    pixels = cast(Any, data).astronaut()  # scikit-image is untyped
    return Image.fromarray(pixels).resize((1024, 1024), Image.Resampling.LANCZOS)


def main() -> None:
    report: dict[str, Any] = {"bench": "formats", "tiny_pipeline_1024x576": sizes(tiny_pipeline_image())}
    photo = photograph()
    if photo is not None:
        report["photograph_1024x1024"] = sizes(photo)
    for name, results in report.items():
        if name == "bench":
            continue
        line = ", ".join(
            f"{choice} {r['bytes']} B ({r['saved_vs_png']:.0%} saved)" for choice, r in results.items()
        )
        print(f"{name}: {line}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
