"""Character LoRA adapters: each file downloaded once into a cache on the volume, the last few
kept loaded in the pipeline, and exactly the requested one (or none) active for each job.

A job names its adapter by a signed download URL and the file's SHA-256. The cache keys files
by that hash, so a file is verified once, as it arrives, and two names for the same bytes share
one copy. Workers on one network volume share the cache: a download is done under an exclusive
``flock`` on the hash's lock file (threads of one worker take separate locks too), so two jobs
that want a new file at once fetch it once; the file appears by an atomic rename, complete or
not at all. The cache is bounded by total size, least recently used files going first.

Loaded adapters are a small LRU in the pipeline (peft modules beside the base weights, never
fused into them), so switching costs a ``set_adapters`` call and "no adapter" is the base
model exactly: ``disable_lora`` leaves the base weights untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import urllib.error
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from worker.errors import AdapterInvalid, AdapterUnavailable
from worker.upload import SIGNED_URL_OPENER

log = structlog.get_logger("worker.adapters")

MAX_ADAPTER_BYTES = 512 * 1024 * 1024  # the character-adapters bucket's limit
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1024 * 1024
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class AdapterRequest:
    """The job's ``lora``: where to fetch the file, what its bytes hash to, how strongly to apply it."""

    url: str
    sha256: str
    weight: float = 1.0


@dataclass(frozen=True)
class CachedAdapter:
    path: Path
    sha256: str
    weight: float
    download_ms: float  # 0 when the file was already in the cache


class AdapterCache:
    """Adapter files by hash under ``directory``, at most ``max_bytes`` in all."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path_of(self, sha256: str) -> Path:
        return self.directory / f"{sha256}{SUFFIX}"

    def fetch(self, request: AdapterRequest) -> CachedAdapter:
        """The adapter's file, downloaded and verified first if the cache lacks it."""
        path = self.path_of(request.sha256)
        started = time.perf_counter()
        downloaded = False
        if not path.exists():
            with self._locked(request.sha256):
                if not path.exists():  # another job may have fetched it while we waited
                    self._download(request, path)
                    downloaded = True
        _touch(path)
        if downloaded:
            self._evict(keep=path)
        return CachedAdapter(
            path,
            request.sha256,
            request.weight,
            (time.perf_counter() - started) * 1000 if downloaded else 0.0,
        )

    def discard(self, sha256: str) -> None:
        """Drop a file the pipeline refused, so the cache holds only adapters that load."""
        with self._locked(sha256):
            self.path_of(sha256).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{sha256}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _download(self, request: AdapterRequest, path: Path) -> None:
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            size, digest = self._stream(request, partial)
            if digest != request.sha256:
                raise AdapterInvalid(
                    f"adapter {request.sha256[:12]}: the downloaded {size} bytes hash to "
                    f"{digest[:12]}, not to the registry's {request.sha256[:12]}"
                )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        log.info("adapter.downloaded", sha256=request.sha256[:12], bytes=size)

    @staticmethod
    def _stream(request: AdapterRequest, partial: Path) -> tuple[int, str]:
        """Write the URL's body to partial; its size and SHA-256."""
        digest, size = hashlib.sha256(), 0
        try:
            with (
                SIGNED_URL_OPENER.open(request.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                open(partial, "wb") as out,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > MAX_ADAPTER_BYTES:
                        raise AdapterInvalid(f"adapter {request.sha256[:12]}: over {MAX_ADAPTER_BYTES} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as error:
            # An expired URL or Storage down: the dispatcher signs a fresh URL for the next attempt.
            raise AdapterUnavailable(
                f"adapter {request.sha256[:12]}: download answered {error.code}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            raise AdapterUnavailable(
                f"adapter {request.sha256[:12]}: download failed: {type(error).__name__}"
            ) from None
        return size, digest.hexdigest()

    def _evict(self, keep: Path) -> None:
        files = []
        for candidate in self.directory.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):  # another worker's eviction
                stat = candidate.stat()
                files.append((stat.st_mtime, stat.st_size, candidate))
        total = sum(size for _, size, _ in files)
        for _, size, candidate in sorted(files):
            if total <= self.max_bytes:
                break
            if candidate != keep:
                candidate.unlink(missing_ok=True)
                total -= size
                log.info("adapter.evicted", sha256=candidate.stem[:12], bytes=size)


def _touch(path: Path) -> None:
    """Mark the file used now (the cache evicts by modification time: atime is often off).
    The time is given, not left to the kernel: its file clock is coarse (milliseconds), so two
    uses a moment apart could read as one and the eviction pick the wrong file."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):
        os.utime(path, ns=(now, now))


@dataclass(frozen=True)
class Activation:
    load_ms: float  # 0 when the adapter was already loaded
    switch_ms: float  # making the requested state the active one (0 when it already was)


class LoadedAdapters:
    """The adapters loaded in the pipeline, at most ``capacity``, and which one is active."""

    def __init__(self, pipe: Any, capacity: int) -> None:
        self.pipe = pipe
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[str, None] = OrderedDict()  # adapter names, least recent first
        self._active: tuple[str, float] | None = None  # or _UNKNOWN after a load

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    @property
    def active(self) -> bool:
        """Whether an adapter may be active now (the next job without one must switch it off)."""
        return self._active is not None

    def activate(self, adapter: CachedAdapter | None) -> Activation:
        """Make ``adapter`` (at its weight) the only active one, or none."""
        load_ms = 0.0
        if adapter is not None and _name(adapter.sha256) not in self._loaded:
            load_ms = self._load(adapter)
        started = time.perf_counter()
        wanted = None if adapter is None else (_name(adapter.sha256), adapter.weight)
        if wanted != self._active:
            if wanted is None:
                if self._loaded:  # with nothing loaded the pipeline is the base model already
                    self.pipe.disable_lora()
            else:
                self.pipe.enable_lora()
                self.pipe.set_adapters([wanted[0]], [wanted[1]])
            self._active = wanted
        if wanted is not None:
            self._loaded.move_to_end(wanted[0])
        return Activation(load_ms, (time.perf_counter() - started) * 1000)

    def _load(self, adapter: CachedAdapter) -> float:
        name = _name(adapter.sha256)
        if len(self._loaded) >= self.capacity:
            oldest, _ = self._loaded.popitem(last=False)
            self.pipe.delete_adapters([oldest])
            if self._active is not None and self._active[0] == oldest:
                self._active = None
        started = time.perf_counter()
        # Loading changes which adapters are active: set them again at the next activation.
        self._active = _UNKNOWN
        try:
            with warnings.catch_warnings():
                # peft warns when a model gets a second adapter: several loaded is the point here
                warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
                self.pipe.load_lora_weights(str(adapter.path), adapter_name=name)
        except Exception as error:  # safetensors, peft and torch each raise their own
            raise AdapterInvalid(
                f"adapter {adapter.sha256[:12]} cannot be applied to this model: "
                f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            ) from error
        if name not in self.pipe.get_list_adapters().get("transformer", []):
            # diffusers warns and loads nothing when no key of the file matches the model
            raise AdapterInvalid(f"adapter {adapter.sha256[:12]} has no weights for this model's transformer")
        self._loaded[name] = None
        return (time.perf_counter() - started) * 1000


_UNKNOWN = ("", float("nan"))  # equal to no wanted state


def _name(sha256: str) -> str:
    return f"lora_{sha256[:16]}"
