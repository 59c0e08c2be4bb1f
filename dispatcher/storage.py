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

    async def upload(self, path: str, data: bytes, content_type: str) -> str:
        """Upsert the image at path; return its public URL."""
        try:
            await self._bucket.upload(path, data, {"content-type": content_type, "upsert": "true"})
        except StorageApiError as exc:
            raise _storage_error(f"upload of {path}", exc) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"upload of {path} failed: {type(exc).__name__}") from exc
        return self.public_url(path)

    async def signed_upload_url(self, path: str) -> str | None:
        """A URL that can write path once (Storage keeps it valid two hours), for the worker to
        upload to with no credential of its own; None if an object is already there (Storage
        refuses to sign an upload over it)."""
        try:
            signed = await self._bucket.create_signed_upload_url(path)
        except StorageApiError as exc:
            if str(exc.status) == "409":
                return None
            raise _storage_error(f"signing an upload of {path}", exc) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"signing an upload of {path} failed: {type(exc).__name__}") from exc
        return str(signed["signed_url"])

    async def signed_download_url(self, path: str, expires_in_s: int) -> str:
        """A URL that reads path for expires_in_s seconds, for a worker with no credential of its
        own; StorageRejected when no object is there (another attempt would find none either)."""
        try:
            signed = await self._bucket.create_signed_url(path, expires_in_s)
        except StorageApiError as exc:
            if str(exc.status) == "404":
                raise StorageRejected(f"{path} is not stored (removed?)") from exc
            raise _storage_error(f"signing a download of {path}", exc) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"signing a download of {path} failed: {type(exc).__name__}") from exc
        return str(signed["signedURL"])

    async def download(self, path: str) -> bytes:
        try:
            return bytes(await self._bucket.download(path))
        except StorageApiError as exc:
            raise _storage_error(f"download of {path}", exc) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"download of {path} failed: {type(exc).__name__}") from exc

    async def remove(self, path: str) -> None:
        try:
            await self._bucket.remove([path])
        except StorageApiError as exc:
            raise _storage_error(f"removal of {path}", exc) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"removal of {path} failed: {type(exc).__name__}") from exc

    def public_url(self, path: str) -> str:
        return f"{self._public_base}/{path}"


def _storage_error(what: str, exc: StorageApiError) -> StorageError:
    try:
        status = int(exc.status)
    except (TypeError, ValueError):
        status = 0
    kind = StorageRejected if status in _REJECTED else StorageError
    return kind(f"{what} failed: {status or exc.status} {exc.code}: {exc.message}")
