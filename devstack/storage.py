"""Supabase Storage stand-in: the subset of its REST API the pipeline uses, same paths and headers.

Served under ``/storage/v1``: upload (POST, PUT; ``x-upsert``; multipart as storage3
sends it, or a raw body), public and authenticated download, HEAD, info, list,
delete, and bucket list/get/create. Writes need the service-role key. Objects
are files under a local directory; bucket rules (public, size limit, content
types) are enforced as Supabase enforces them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from devstack.keys import LocalKeys


@dataclass
class Bucket:
    id: str
    public: bool = False
    file_size_limit: int | None = None
    allowed_mime_types: list[str] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.id,
            "owner": "",
            "public": self.public,
            "file_size_limit": self.file_size_limit,
            "allowed_mime_types": self.allowed_mime_types,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        }


@dataclass
class StoredObject:
    id: str
    content_type: str
    size: int
    cache_control: str
    updated_at: str

    def as_json(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "id": self.id,
            "updated_at": self.updated_at,
            "created_at": self.updated_at,
            "last_accessed_at": self.updated_at,
            "metadata": {
                "size": self.size,
                "mimetype": self.content_type,
                "cacheControl": f"max-age={self.cache_control}",
            },
        }


def storage_error(status: int, error: str, message: str) -> JSONResponse:
    """Supabase Storage's error body, which storage3 parses into StorageApiError."""
    return JSONResponse({"statusCode": str(status), "error": error, "message": message}, status_code=status)


class LocalStorage:
    """The bucket and object state, with files under root."""

    def __init__(self, root: Path, keys: LocalKeys) -> None:
        self.root = root
        self.keys = keys
        self.buckets: dict[str, Bucket] = {}
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.writes: Counter[tuple[str, str]] = Counter()  # uploads per object, for tests

    def path_of(self, bucket: str, name: str) -> Path:
        return self.root / bucket / name

    def role(self, request: Request) -> str | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return self.keys.role_of(token) if token else None

    def app(self) -> Starlette:
        routes = [
            Route("/bucket", self.list_buckets, methods=["GET"]),
            Route("/bucket", self.create_bucket, methods=["POST"]),
            Route("/bucket/{bucket}", self.get_bucket, methods=["GET"]),
            Route("/object/copy", self.copy, methods=["POST"]),
            Route("/object/public/{bucket}/{name:path}", self.download_public, methods=["GET", "HEAD"]),
            Route("/object/info/{bucket}/{name:path}", self.info, methods=["GET"]),
            Route("/object/list/{bucket}", self.list_objects, methods=["POST"]),
            Route("/object/{bucket}", self.remove_many, methods=["DELETE"]),
            Route("/object/{bucket}/{name:path}", self.upload, methods=["POST", "PUT"]),
            Route("/object/{bucket}/{name:path}", self.download, methods=["GET", "HEAD"]),
            Route("/object/{bucket}/{name:path}", self.remove_one, methods=["DELETE"]),
        ]
        return Starlette(routes=[Mount("/storage/v1", routes=routes)])

    # ---- buckets ---------------------------------------------------------------------
    async def list_buckets(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return storage_error(403, "Unauthorized", "listing buckets needs the service role key")
        return JSONResponse([bucket.as_json() for bucket in self.buckets.values()])

    async def get_bucket(self, request: Request) -> Response:
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found")
        return JSONResponse(bucket.as_json())

    async def create_bucket(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return storage_error(403, "Unauthorized", "creating buckets needs the service role key")
        body = await request.json()
        bucket_id = body.get("id") or body.get("name")
        if not bucket_id:
            return storage_error(400, "invalid_request", "a bucket needs an id")
        if bucket_id in self.buckets:
            return storage_error(409, "Duplicate", "The resource already exists")
        self.add_bucket(
            Bucket(
                bucket_id,
                bool(body.get("public")),
                body.get("file_size_limit"),
                body.get("allowed_mime_types"),
            )
        )
        return JSONResponse({"name": bucket_id})

    def add_bucket(self, bucket: Bucket) -> None:
        self.buckets[bucket.id] = bucket
        (self.root / bucket.id).mkdir(parents=True, exist_ok=True)

    # ---- objects ---------------------------------------------------------------------
    def _target(self, request: Request) -> tuple[Bucket, str] | Response:
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found")
        name = request.path_params.get("name", "")
        parts = PurePosixPath(name).parts
        if not name or ".." in parts or name.startswith("/"):
            return storage_error(400, "InvalidKey", f"Invalid key: {name}")
        return bucket, name

    async def upload(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return storage_error(403, "Unauthorized", "new row violates row-level security policy")
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        content, content_type, cache_control = await self._read_upload(request)
        upsert = request.method == "PUT" or request.headers.get("x-upsert", "").lower() == "true"
        if (bucket.id, name) in self.objects and not upsert:
            return storage_error(409, "Duplicate", "The resource already exists")
        if bucket.allowed_mime_types and content_type not in bucket.allowed_mime_types:
            return storage_error(415, "invalid_mime_type", f"mime type {content_type} is not supported")
        if bucket.file_size_limit is not None and len(content) > bucket.file_size_limit:
            return storage_error(413, "Payload too large", "The object exceeded the maximum allowed size")
        path = self.path_of(bucket.id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        partial.write_bytes(content)
        partial.replace(path)  # readers never see half a file
        stored = StoredObject(
            str(uuid.uuid4()), content_type, len(content), cache_control, datetime.now(UTC).isoformat()
        )
        self.objects[(bucket.id, name)] = stored
        self.writes[(bucket.id, name)] += 1
        return JSONResponse({"Key": f"{bucket.id}/{name}", "Id": stored.id})

    @staticmethod
    async def _read_upload(request: Request) -> tuple[bytes, str, str]:
        content_type = request.headers.get("content-type", "application/octet-stream")
        if content_type.startswith("multipart/form-data"):
            async with request.form() as form:  # closes the spooled upload files
                upload = form.get("file")
                cache_control = str(form.get("cacheControl") or "3600")
                if upload is None or isinstance(upload, str):
                    return b"", "text/plain", cache_control
                return await upload.read(), upload.content_type or "application/octet-stream", cache_control
        return await request.body(), content_type.split(";")[0], request.headers.get("cache-control", "3600")

    async def copy(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return storage_error(403, "Unauthorized", "copying needs the service role key")
        body = await request.json()
        bucket_id, source, destination = (
            body.get("bucketId"),
            body.get("sourceKey"),
            body.get("destinationKey"),
        )
        stored = self.objects.get((bucket_id, source))
        if stored is None:
            return storage_error(404, "not_found", "Object not found")
        if not destination or ".." in PurePosixPath(destination).parts:
            return storage_error(400, "InvalidKey", f"Invalid key: {destination}")
        target = self.path_of(bucket_id, destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.path_of(bucket_id, source).read_bytes())
        self.objects[(bucket_id, destination)] = StoredObject(
            str(uuid.uuid4()),
            stored.content_type,
            stored.size,
            stored.cache_control,
            datetime.now(UTC).isoformat(),
        )
        return JSONResponse({"Key": f"{bucket_id}/{destination}"})

    async def download_public(self, request: Request) -> Response:
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None or not bucket.public:
            return storage_error(400, "not_found", "Bucket not found")
        return self._serve(request)

    async def download(self, request: Request) -> Response:
        if self.role(request) is None:
            return storage_error(400, "Unauthorized", "invalid or missing JWT")
        return self._serve(request)

    def _serve(self, request: Request) -> Response:
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        stored = self.objects.get((bucket.id, name))
        if stored is None:
            return storage_error(404, "not_found", "Object not found")
        headers = {"cache-control": f"max-age={stored.cache_control}", "etag": f'"{stored.id}"'}
        return FileResponse(self.path_of(bucket.id, name), media_type=stored.content_type, headers=headers)

    async def info(self, request: Request) -> Response:
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        stored = self.objects.get((bucket.id, name))
        if stored is None:
            return storage_error(404, "not_found", "Object not found")
        return JSONResponse(
            {
                **stored.as_json(name),
                "bucket_id": bucket.id,
                "size": stored.size,
                "content_type": stored.content_type,
            }
        )

    async def list_objects(self, request: Request) -> Response:
        if self.role(request) is None:
            return storage_error(400, "Unauthorized", "invalid or missing JWT")
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found")
        body = await request.json()
        prefix = str(body.get("prefix") or "").strip("/")
        search = str(body.get("search") or "")
        entries: dict[str, dict[str, Any]] = {}
        for (bucket_id, name), stored in self.objects.items():
            leaf = name.rpartition("/")[2]
            if bucket_id != bucket.id or not (name.startswith(f"{prefix}/") if prefix else True):
                continue
            rest = name[len(prefix) + 1 :] if prefix else name
            first, _, deeper = rest.partition("/")
            if search and not first.startswith(search):
                continue
            entries[first] = (
                {
                    "name": first,
                    "id": None,
                    "updated_at": None,
                    "created_at": None,
                    "last_accessed_at": None,
                    "metadata": None,
                }
                if deeper
                else stored.as_json(leaf)
            )
        ordered = [entries[key] for key in sorted(entries)]
        offset, limit = int(body.get("offset", 0)), int(body.get("limit", 100))
        return JSONResponse(ordered[offset : offset + limit])

    async def remove_many(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return storage_error(403, "Unauthorized", "deleting needs the service role key")
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found")
        body = await request.json()
        removed = [self._remove(bucket.id, str(name)) for name in body.get("prefixes", [])]
        return JSONResponse([entry for entry in removed if entry is not None])

    async def remove_one(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return storage_error(403, "Unauthorized", "deleting needs the service role key")
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        if self._remove(bucket.id, name) is None:
            return storage_error(404, "not_found", "Object not found")
        return JSONResponse({"message": "Successfully deleted"})

    def _remove(self, bucket_id: str, name: str) -> dict[str, Any] | None:
        stored = self.objects.pop((bucket_id, name), None)
        if stored is None:
            return None
        self.path_of(bucket_id, name).unlink(missing_ok=True)
        return {**stored.as_json(name), "bucket_id": bucket_id}
