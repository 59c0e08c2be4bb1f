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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
