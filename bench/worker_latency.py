"""Worker latency: cold start (imports, load, warm-up) and warm per-image latency for each
quality and aspect ratio, through the real handler; with --adapters N, what character LoRA
adapters cost: the first load of each, a switch between loaded ones, back to none, and the
per-image time with one active against none (random adapters of --adapter-rank for the model's
own transformer, built first; MODEL_ID must then be a local directory). Prints one JSON object
on its last line.

    python bench/worker_latency.py --adapters 3       # tiny offline pipeline (CPU or GPU)
    MODEL_ID=/path/to/Z-Image-Turbo python bench/worker_latency.py --repeats 10 --adapters 3 --adapter-rank 32
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
    parser.add_argument("--adapters", type=int, default=0, help="random LoRA adapters to time (0: none)")
    parser.add_argument("--adapter-rank", type=int, default=4, help="their rank (characters: 16-64)")
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

    adapters = adapter_costs(generator, Path(settings.model_id), args) if args.adapters else None
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
                "adapters": adapters,
            }
        )
    )


def adapter_costs(generator: Any, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Through ImageGenerator.generate, as the handler calls it with a cached adapter."""
    import hashlib

    from worker.adapters import CachedAdapter
    from worker.request import GenerationRequest
    from worker.tiny import build_tiny_adapter

    directory = Path(tempfile.mkdtemp())
    adapters = []
    for n in range(args.adapters):
        path = build_tiny_adapter(
            model, directory / f"adapter-{n}.safetensors", seed=n, rank=args.adapter_rank
        )
        adapters.append(CachedAdapter(path, hashlib.sha256(path.read_bytes()).hexdigest(), 1.0, 0.0))
    request = GenerationRequest(
        prompt="A medieval market square, 1350", steps=9, width=1024, height=576, seed=1
    )
    first_load, switch, to_none, with_adapter, without = [], [], [], [], []
    generator.generate(request)  # untimed, as above
    for adapter in adapters:  # each loaded once
        image = generator.generate(request, adapter=adapter)
        first_load.append(image.adapter.load_ms + image.adapter.switch_ms)
    for _ in range(args.repeats):
        for adapter in adapters:  # all loaded (LORA_MAX_LOADED permitting): switches only
            image = generator.generate(request, adapter=adapter)
            switch.append(image.adapter.switch_ms)
            with_adapter.append(image.inference_ms)
        image = generator.generate(request)
        to_none.append(image.adapter.switch_ms)
        without.append(generator.generate(request).inference_ms)
    costs = {
        "rank": args.adapter_rank,
        "file_bytes": adapters[0].path.stat().st_size,
        "first_load_p50_ms": round(statistics.median(first_load), 1),
        "switch_p50_ms": round(statistics.median(switch), 2),
        "to_none_p50_ms": round(statistics.median(to_none), 2),
        "inference_with_adapter_p50_ms": round(statistics.median(with_adapter), 1),
        "inference_without_p50_ms": round(statistics.median(without), 1),
    }
    print(f"adapters: {costs}", file=sys.stderr)
    return costs


if __name__ == "__main__":
    main()
