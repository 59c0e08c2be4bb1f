"""The object storage adapter: Supabase Storage through the official storage3 client.

The local stand-in speaks the same API, so this one adapter serves both.
"""

from __future__ import annotations

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from dispatcher.domain import StorageError, StorageRejected

# Answers that say the request itself is wrong (a key Storage refuses, a type or size the
# bucket does not allow): another attempt would fail the same way. 401/403 are not here:
# they mean the deployment's key is wrong, not the job.
_REJECTED = {400, 413, 415, 422}


class SupabaseStorage:
    def __init__(
        self,
        http: httpx.AsyncClient,
        supabase_url: str,
        service_role_key: str,
        bucket: str,
    ) -> None:
        base = supabase_url.rstrip("/")
        headers = {"Authorization": f"Bearer {service_role_key}", "apikey": service_role_key}
        self._bucket = AsyncStorageClient(f"{base}/storage/v1/", headers, http_client=http).from_(bucket)
        self._public_base = f"{base}/storage/v1/object/public/{bucket}"

    async def upload_png(self, path: str, png: bytes) -> str:
        """Upsert the PNG at path; return its public URL."""
        try:
            await self._bucket.upload(path, png, {"content-type": "image/png", "upsert": "true"})
        except StorageApiError as exc:
            raise _storage_error(f"upload of {path}", exc) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"upload of {path} failed: {type(exc).__name__}") from exc
        return self.public_url(path)

    async def download(self, path: str) -> bytes:
        try:
            return bytes(await self._bucket.download(path))
        except StorageApiError as exc:
            raise _storage_error(f"download of {path}", exc) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"download of {path} failed: {type(exc).__name__}") from exc

    def public_url(self, path: str) -> str:
        return f"{self._public_base}/{path}"


def _storage_error(what: str, exc: StorageApiError) -> StorageError:
    try:
        status = int(exc.status)
    except (TypeError, ValueError):
        status = 0
    kind = StorageRejected if status in _REJECTED else StorageError
    return kind(f"{what} failed: {status or exc.status} {exc.code}: {exc.message}")
