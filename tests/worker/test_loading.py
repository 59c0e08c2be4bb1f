"""Loading: local paths, a hub id from a populated cache, and loud failures at start-up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker.pipeline import ImageGenerator
from worker.settings import DEFAULT_MODEL_ID, SettingsError, WorkerSettings
from worker.tiny import VOCABULARY_SIZE

REPO = Path(__file__).resolve().parents[2]


def hub_cache_with(model: Path, cache: Path, model_id: str = DEFAULT_MODEL_ID) -> Path:
    """Lay a saved pipeline out the way huggingface_hub caches a download of model_id."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache


def test_the_default_hub_id_loads_offline_from_a_populated_cache(tiny_model: Path, tmp_path: Path) -> None:
    cache = hub_cache_with(tiny_model, tmp_path / "hub")
    settings = WorkerSettings.from_env({"MODEL_CACHE_DIR": str(cache)})
    assert settings.model_id == "Tongyi-MAI/Z-Image-Turbo"
    generator = ImageGenerator.load(settings)
    assert len(generator.pipe.tokenizer) == VOCABULARY_SIZE
    assert generator.device.type == "cpu"
    assert generator.pipe.transformer.dtype.is_floating_point


def test_a_model_missing_its_tokenizer_is_refused_at_load(tiny_model: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(RuntimeError, match=r"tokenizer of .* has \d+ tokens"):
        ImageGenerator.load(WorkerSettings(model_id=str(broken)))


def test_settings_refuse_a_malformed_flag() -> None:
    with pytest.raises(SettingsError, match="TORCH_COMPILE"):
        WorkerSettings.from_env({"TORCH_COMPILE": "maybe"})
    assert "secret" not in repr(WorkerSettings.from_env({"HF_TOKEN": "secret"}))


def run_worker(model_id: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MODEL_ID": model_id,
        "HF_HUB_OFFLINE": "1",
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
    }
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


def test_test_input_runs_one_job_through_the_runpod_sdk(tiny_model: Path) -> None:
    job = {"input": {"prompt": "a Roman aqueduct", "width": 256, "height": 256, "seed": 9}}
    result = run_worker(str(tiny_model), "--test_input", json.dumps(job))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Job local_test completed successfully." in output
    assert "image_base64" in output


def test_the_shipped_test_input_json_runs(tiny_model: Path) -> None:
    result = run_worker(str(tiny_model))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Using test_input.json as job input." in result.stdout + result.stderr


def test_bad_test_input_fails_the_job_with_the_field_named(tiny_model: Path) -> None:
    result = run_worker(str(tiny_model), "--test_input", json.dumps({"input": {"prompt": ""}}))
    assert result.returncode == 1
    assert "prompt: must not be empty or blank" in result.stdout + result.stderr


def test_a_model_that_cannot_load_crashes_the_worker_at_start_up(tmp_path: Path) -> None:
    result = run_worker(
        str(tmp_path / "no-such-model"), "--test_input", json.dumps({"input": {"prompt": "x"}})
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Starting Serverless Worker" not in output, "the SDK must not start taking jobs"
    assert "no-such-model" in output
