"""The CUDA paths of the worker: bfloat16, a CUDA generator, a real out-of-memory error.

Skipped without a GPU; run on a GPU machine with the tiny pipeline (real weights
are not needed to exercise these paths).
"""

from __future__ import annotations

import pytest
import torch

from worker.encoding import encode
from worker.errors import OutOfMemory
from worker.pipeline import ImageGenerator
from worker.request import Delivery, GenerationRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_pipeline_runs_in_bfloat16_on_the_gpu(generator: ImageGenerator) -> None:
    assert generator.device.type == "cuda"
    assert generator.pipe.transformer.dtype == torch.bfloat16
    assert next(generator.pipe.text_encoder.parameters()).device.type == "cuda"


def test_a_cuda_generator_is_deterministic(generator: ImageGenerator) -> None:
    request = GenerationRequest(prompt="a Greek trireme", steps=9, width=512, height=512, seed=11)
    first, again = (encode(generator.generate(request).image, Delivery()).data for _ in range(2))
    assert first == again


def test_a_real_out_of_memory_error_frees_the_cache_and_the_worker_keeps_serving(
    generator: ImageGenerator,
) -> None:
    # Latents of 16 x 70000 x 70000 in bfloat16 need about 156 GB: the allocation itself fails.
    absurd = GenerationRequest(prompt="the whole world", steps=9, width=560_000, height=560_000, seed=1)
    with pytest.raises(OutOfMemory, match="560000x560000"):
        generator.generate(absurd)
    reserved_after_oom = torch.cuda.memory_reserved()
    image = generator.generate(
        GenerationRequest(prompt="a lighthouse", steps=9, width=1024, height=576, seed=2)
    )
    assert (image.width, image.height) == (1024, 576)
    assert reserved_after_oom < 4 * 1024**3, "the failed allocation's cache was not freed"
