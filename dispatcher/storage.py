"""The object storage adapter: Supabase Storage through the official storage3 client.

The local stand-in speaks the same API, so this one adapter serves both.
"""

from __future__ import annotations

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from dispatcher.domain import StorageError


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
        except (StorageApiError, httpx.HTTPError) as exc:
            raise StorageError(f"upload of {path} failed: {exc}") from exc
        return self.public_url(path)

    async def copy(self, source: str, destination: str) -> str:
        try:
            await self._bucket.copy(source, destination)
        except (StorageApiError, httpx.HTTPError) as exc:
            raise StorageError(f"copy of {source} to {destination} failed: {exc}") from exc
        return self.public_url(destination)

    def public_url(self, path: str) -> str:
        return f"{self._public_base}/{path}"
