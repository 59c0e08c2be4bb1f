"""RunPod Hub's .runpod/hub.json and .runpod/tests.json: well formed, consistent, and valid inputs.

A GPU or CUDA mismatch between the two files makes Hub tests hang with no log,
and a test input the handler refuses fails the listing: both are checked here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.request import parse_request

RUNPOD_DIR = Path(__file__).resolve().parents[2] / ".runpod"
# RunPod's GPU pools (gpuIds) and the GPU types (gpuTypeId) each one holds.
GPU_POOLS = {
    "AMPERE_16": {"NVIDIA RTX A4000", "NVIDIA RTX A4500", "NVIDIA RTX 4000 Ada Generation"},
    "AMPERE_24": {"NVIDIA RTX A5000", "NVIDIA L4", "NVIDIA GeForce RTX 3090"},
    "ADA_24": {"NVIDIA GeForce RTX 4090"},
    "AMPERE_48": {"NVIDIA A40", "NVIDIA RTX A6000"},
    "ADA_48_PRO": {"NVIDIA RTX 6000 Ada Generation", "NVIDIA L40", "NVIDIA L40S"},
    "AMPERE_80": {"NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"},
    "ADA_80_PRO": {"NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL"},
    "HOPPER_141": {"NVIDIA H200"},
}
# Z-Image-Turbo in bfloat16 (6B transformer + Qwen3-4B text encoder + VAE) needs about 24 GB.
MIN_GPU_MEMORY_POOLS = {"AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141"}
# Loading about 20 GB of weights on a cold worker can take minutes.
MIN_TEST_TIMEOUT_MS = 600_000


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RUNPOD_DIR / name).read_text())
    return data


def test_hub_json_has_the_required_fields() -> None:
    hub = load("hub.json")
    assert {"title", "description", "type", "category", "config"} <= set(hub)
    assert (hub["type"], hub["category"], hub["config"]["runsOn"]) == ("serverless", "image", "GPU")
    assert hub["config"]["gpuCount"] == 1
    assert hub["config"]["containerDiskInGb"] >= 40
    for variable in hub["config"]["env"]:
        assert "value" in variable or {"name", "type", "description"} <= set(variable["input"]), variable


def hub_gpu_types() -> set[str]:
    entries = [entry.strip() for entry in load("hub.json")["config"]["gpuIds"].split(",")]
    excluded = {entry[1:] for entry in entries if entry.startswith("-")}
    pools = [entry for entry in entries if not entry.startswith("-")]
    assert set(pools) <= set(GPU_POOLS), f"unknown pools: {set(pools) - set(GPU_POOLS)}"
    assert set(pools) <= MIN_GPU_MEMORY_POOLS, "every pool must have room for the model"
    return set().union(*(GPU_POOLS[pool] for pool in pools)) - excluded


def test_the_test_gpu_is_one_the_hub_listing_can_run_on() -> None:
    assert load("tests.json")["config"]["gpuTypeId"] in hub_gpu_types()
    assert load("tests.json")["config"]["gpuCount"] == load("hub.json")["config"]["gpuCount"]


def test_cuda_versions_agree_and_cover_the_images_cuda() -> None:
    hub_versions = load("hub.json")["config"]["allowedCudaVersions"]
    assert load("tests.json")["config"]["allowedCudaVersions"] == hub_versions
    dockerfile = (RUNPOD_DIR.parent / "Dockerfile.worker").read_text()
    image_cuda = dockerfile.split("-cuda", 1)[1].split("-", 1)[0]  # e.g. 12.8.1
    major_minor = tuple(int(part) for part in image_cuda.split(".")[:2])
    assert all(tuple(int(p) for p in version.split(".")) >= major_minor for version in hub_versions), (
        "a driver older than the image's CUDA cannot run it"
    )


@pytest.mark.parametrize("test", load("tests.json")["tests"], ids=lambda test: test["name"])
def test_each_hub_test_input_validates_and_allows_for_model_loading(test: dict[str, Any]) -> None:
    parse_request(test["input"])
    assert test["timeout"] >= MIN_TEST_TIMEOUT_MS


def test_the_shipped_test_input_validates() -> None:
    shipped = json.loads((RUNPOD_DIR.parent / "test_input.json").read_text())
    parse_request(shipped["input"])
