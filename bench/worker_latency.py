"""Worker latency: cold start (imports, load, warm-up) and warm per-image latency for each
quality and aspect ratio, through the real handler. Prints one JSON object on its last line.

    python bench/worker_latency.py                    # tiny offline pipeline (CPU or GPU)
    MODEL_ID=/path/to/Z-Image-Turbo python bench/worker_latency.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed images per quality and aspect ratio")
    args = parser.parse_args()

    started = time.perf_counter()
    import torch

    from worker.handler import make_handler
    from worker.pipeline import ImageGenerator
    from worker.request import ASPECT_RATIO_SIZES, QUALITY_STEPS
    from worker.settings import WorkerSettings
    from worker.tiny import build_tiny_pipeline

    import_ms = (time.perf_counter() - started) * 1000
    settings = WorkerSettings.from_env(os.environ)
    model = "tiny"
    if "MODEL_ID" not in os.environ:
        os.environ["HF_HUB_OFFLINE"] = "1"
        tiny = build_tiny_pipeline(Path(tempfile.mkdtemp()) / "tiny-z-image")
        settings = WorkerSettings(**{**settings.__dict__, "model_id": str(tiny)})
    else:
        model = settings.model_id

    loading = time.perf_counter()
    generator = ImageGenerator.load(settings)  # includes the warm-up on a GPU
    cold_ms = (time.perf_counter() - loading) * 1000
    handler = make_handler(generator)

    results: dict[str, Any] = {}
    for quality in QUALITY_STEPS:
        for aspect_ratio in ASPECT_RATIO_SIZES:
            job = {
                "id": "bench",
                "input": {
                    "prompt": "A medieval market square, 1350",
                    "quality": quality,
                    "aspectRatio": aspect_ratio,
                    "seed": 1,
                },
            }
            handler(job)  # untimed: the first call at a size pays for allocator growth
            wall, inference, encode = [], [], []
            for _ in range(args.repeats):
                begin = time.perf_counter()
                output = handler(job)
                wall.append((time.perf_counter() - begin) * 1000)
                inference.append(output["timings"]["inference_ms"])
                encode.append(output["timings"]["encode_ms"])
            results[f"{quality} {aspect_ratio}"] = {
                "p50_ms": round(statistics.median(wall), 1),
                "min_ms": round(min(wall), 1),
                "inference_p50_ms": round(statistics.median(inference), 1),
                "encode_p50_ms": round(statistics.median(encode), 1),
            }
            print(f"{quality:>5} {aspect_ratio:>4}: {results[f'{quality} {aspect_ratio}']}", file=sys.stderr)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        json.dumps(
            {
                "bench": "worker_latency",
                "model": model,
                "device": device,
                "repeats": args.repeats,
                "import_ms": round(import_ms),
                "load_ms": round(generator.load_ms),
                "cold_start_ms": round(cold_ms),
                "warm": results,
            }
        )
    )


if __name__ == "__main__":
    main()
