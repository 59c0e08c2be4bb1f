"""Where a job's PNG is stored.

With a project and timed prompts, the names the video pipeline expects from the
old edge function: ``{projectId}/images/image_{index:03}_{startTime}_to_{endTime}.png``.
Otherwise ``generated-images/{job_id}.png``: derived from the job id, so two
batches can never overwrite each other (the old function wrote every batch to
image_001.png, image_002.png, ...).
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def storage_path(job_id: UUID, project_id: str | None, timing: dict[str, Any] | None) -> str:
    if timing is not None and {"index", "startTime", "endTime"} <= set(timing):
        start, end = _clean(timing["startTime"]), _clean(timing["endTime"])
        name = f"image_{int(timing['index']):03d}_{start}_to_{end}.png"
        return f"{_clean(project_id)}/images/{name}" if project_id else f"timed-images/{job_id}/{name}"
    return f"generated-images/{job_id}.png"


def _clean(value: Any) -> str:
    return _UNSAFE.sub("_", str(value))
