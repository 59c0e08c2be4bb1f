"""The worker's settings, read once from the environment at start-up.

MODEL_ID               hub id or local directory (network volume, baked image);
                       default Tongyi-MAI/Z-Image-Turbo
MODEL_CACHE_DIR        hub download cache; put it on the volume (/runpod-volume/...);
                       default: huggingface_hub's ($HF_HOME/hub)
HF_TOKEN               hub token, used when set
ATTENTION_BACKEND      diffusers attention backend, e.g. "flash" or "_flash_3" (the kernel
                       must be installed); default: PyTorch SDPA
TORCH_COMPILE          1: torch.compile the transformer (longer cold start); default 0
WARMUP                 one short generation per aspect ratio at start-up; default: on a GPU
REFRESH_WORKER_ON_OOM  ask RunPod to recycle the worker after out-of-memory; default 1
LORA_CACHE_DIR         where character adapters are kept; default: "lora-cache" beside
                       MODEL_CACHE_DIR, else ~/.cache/zimage/lora-cache
LORA_CACHE_GB          the adapter cache's size bound, least recently used going first; default 20
LORA_MAX_LOADED        adapters kept loaded in the pipeline (each costs its size in GPU
                       memory: 100-300 MB for a typical character); default 4
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL_ID = "Tongyi-MAI/Z-Image-Turbo"


class SettingsError(ValueError):
    """A malformed environment variable; the message names it."""


@dataclass(frozen=True)
class WorkerSettings:
    model_id: str = DEFAULT_MODEL_ID
    model_cache_dir: str | None = None
    hf_token: str | None = field(default=None, repr=False)
    attention_backend: str | None = None
    torch_compile: bool = False
    warmup: bool | None = None  # None: warm up when a GPU is present
    refresh_worker_on_oom: bool = True
    on_platform: bool = False  # RunPod (or its stand-in) runs us: progress updates have somewhere to go
    lora_cache_dir: Path | None = None  # None: beside the model cache (see adapter_cache_dir)
    lora_cache_bytes: int = 20 * 1024**3
    lora_max_loaded: int = 4

    @property
    def adapter_cache_dir(self) -> Path:
        if self.lora_cache_dir is not None:
            return self.lora_cache_dir
        if self.model_cache_dir:
            return Path(self.model_cache_dir).parent / "lora-cache"
        return Path.home() / ".cache" / "zimage" / "lora-cache"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        return cls(
            model_id=env.get("MODEL_ID") or DEFAULT_MODEL_ID,
            model_cache_dir=env.get("MODEL_CACHE_DIR") or None,
            hf_token=env.get("HF_TOKEN") or None,
            attention_backend=env.get("ATTENTION_BACKEND") or None,
            torch_compile=_flag(env, "TORCH_COMPILE", False),
            warmup=_optional_flag(env, "WARMUP"),
            refresh_worker_on_oom=_flag(env, "REFRESH_WORKER_ON_OOM", True),
            on_platform=bool(env.get("RUNPOD_WEBHOOK_POST_OUTPUT")),
            lora_cache_dir=Path(env["LORA_CACHE_DIR"]) if env.get("LORA_CACHE_DIR") else None,
            lora_cache_bytes=int(_number(env, "LORA_CACHE_GB", 20) * 1024**3),
            lora_max_loaded=int(_number(env, "LORA_MAX_LOADED", 4, integer=True)),
        )


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _optional_flag(env, name)
    return default if value is None else value


def _optional_flag(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}: expected 1/0, true/false, yes/no or on/off, got {raw!r}")


def _number(env: Mapping[str, str], name: str, default: float, integer: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a {'whole ' if integer else ''}number, got {raw!r}") from None
    if not value > 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return value
