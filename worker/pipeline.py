"""Loading Z-Image-Turbo once per container, and generating one image per request."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import torch
from diffusers import ZImagePipeline

from worker.adapters import Activation, CachedAdapter, LoadedAdapters
from worker.errors import OutOfMemory
from worker.request import ASPECT_RATIO_SIZES, GUIDANCE_SCALE, GenerationRequest
from worker.settings import WorkerSettings

log = structlog.get_logger("worker.pipeline")

# A byte-level BPE has at least 256 tokens. Offline, transformers can hand back
# a tokenizer with a vocabulary of 1 instead of failing; refuse to serve with it.
MIN_TOKENIZER_SIZE = 256


StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class GeneratedImage:
    image: Any  # a PIL image, encoded by worker/encoding.py as the job asks
    width: int
    height: int
    inference_ms: float
    adapter: Activation | None = None  # set when the job asked for an adapter or left one


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(settings: WorkerSettings, device: torch.device) -> Any:
    """Load the pipeline onto the device; any failure here must crash the worker at start-up."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = ZImagePipeline.from_pretrained(
        settings.model_id, dtype=dtype, token=settings.hf_token, cache_dir=settings.model_cache_dir
    )
    vocabulary = len(pipe.tokenizer)
    if vocabulary < MIN_TOKENIZER_SIZE:
        raise RuntimeError(
            f"tokenizer of {settings.model_id} has {vocabulary} tokens: its files are missing or unreadable"
        )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if settings.attention_backend:
        pipe.transformer.set_attention_backend(settings.attention_backend)
    if settings.torch_compile:
        pipe.transformer.compile()
    return pipe


class ImageGenerator:
    """The loaded pipeline and the device it lives on; one per worker process."""

    def __init__(self, pipe: Any, device: torch.device, load_ms: float, max_loaded_adapters: int = 4) -> None:
        self.pipe = pipe
        self.device = device
        self.load_ms = load_ms
        self.adapters = LoadedAdapters(pipe, max_loaded_adapters)

    @classmethod
    def load(cls, settings: WorkerSettings) -> ImageGenerator:
        device = pick_device()
        started = time.perf_counter()
        pipe = load_pipeline(settings, device)
        load_ms = (time.perf_counter() - started) * 1000
        generator = cls(pipe, device, load_ms, max_loaded_adapters=settings.lora_max_loaded)
        log.info(
            "pipeline.loaded",
            model_id=settings.model_id,
            device=device.type,
            load_ms=round(generator.load_ms),
        )
        if settings.warmup if settings.warmup is not None else device.type == "cuda":
            generator.warm_up()
        return generator

    def warm_up(self) -> None:
        """One short generation per served size: kernels chosen, allocator primed, graphs compiled."""
        started = time.perf_counter()
        for width, height in ASPECT_RATIO_SIZES.values():
            self.generate(GenerationRequest(prompt="warm-up", steps=2, width=width, height=height, seed=0))
        log.info("pipeline.warmed_up", warmup_ms=round((time.perf_counter() - started) * 1000))

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        adapter: CachedAdapter | None = None,
    ) -> GeneratedImage:
        """One image with exactly ``adapter`` active (None: the base model, whatever ran before);
        ``on_step(step, steps, elapsed_s)`` is called after each denoising step."""
        had_adapter = self.adapters.active
        activation = self.adapters.activate(adapter)
        started = time.perf_counter()

        def step_done(_pipe: Any, index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(index + 1, request.steps, time.perf_counter() - started)
            return tensors

        try:
            with torch.inference_mode():
                image = self.pipe(
                    prompt=request.prompt,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=GUIDANCE_SCALE,
                    generator=torch.Generator(device=self.device).manual_seed(request.seed),
                    callback_on_step_end=step_done if on_step is not None else None,
                ).images[0]
        except torch.OutOfMemoryError as exc:  # a RuntimeError: caught before anything broader
            self.free_memory()
            raise OutOfMemory(
                f"GPU out of memory at {request.width}x{request.height}, {request.steps} steps; "
                "the cache was freed, another attempt may fit"
            ) from exc
        return GeneratedImage(
            image=image,
            width=image.width,
            height=image.height,
            inference_ms=(time.perf_counter() - started) * 1000,
            adapter=activation if adapter is not None or had_adapter else None,
        )

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
