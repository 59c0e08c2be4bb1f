"""Supabase Storage stand-in: the subset of its REST API the pipeline uses, same paths and headers.

Served under ``/storage/v1``: upload (POST, PUT; ``x-upsert``; multipart as storage3
sends it, or a raw body), public and authenticated download, HEAD, info, list,
delete, copy, signed download URLs (``/object/sign``) and signed upload URLs
(``/object/upload/sign``), and bucket list/get/create. Objects are files under a
local directory; bucket rules (public, size limit, content types) are enforced as
Supabase enforces them.

Answered as the Storage API server answers (never more permissively): errors are HTTP
400 with the real status, error and code in the body; JSON is ``application/json;
charset=utf-8``; every answer says ``x-robots-tag: none``; etags are the content's MD5.

Access is decided as ``storage.objects`` row level security decides it with the
policies the migrations define, which are none: the service role may do everything;
any other caller reads nothing through the authenticated routes (a download is "Object
not found", a list is empty) and writes nothing. Public buckets' objects are read by
anyone through ``/object/public``, whatever key comes along. A key whose signature does
not verify is refused everywhere else.
"""

from __future__ import annotations

import hashlib
import time
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    etag: str = ""  # the content's MD5, quoted, as Storage's S3 backend reports it
    version: str = field(default_factory=lambda: str(uuid.uuid4()))

    def metadata(self) -> dict[str, Any]:
        return {
            "eTag": self.etag,
            "size": self.size,
            "mimetype": self.content_type,
            "cacheControl": f"max-age={self.cache_control}",
            "lastModified": self.updated_at,
            "contentLength": self.size,
            "httpStatusCode": 200,
        }

    def as_json(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "id": self.id,
            "updated_at": self.updated_at,
            "created_at": self.updated_at,
            "last_accessed_at": self.updated_at,
            "metadata": self.metadata(),
        }

    def row(self, bucket_id: str, name: str) -> dict[str, Any]:
        """The storage.objects row, as copy answers it."""
        return {
            **self.as_json(name),
            "bucket_id": bucket_id,
            "owner": None,
            "owner_id": None,
            "version": self.version,
            "user_metadata": None,
        }


class StorageJSON(JSONResponse):
    media_type = "application/json; charset=utf-8"


def storage_error(status: int, error: str, message: str, code: str | None = None) -> JSONResponse:
    """Supabase Storage's error: HTTP 400 with the real status in the body (storage3 reads it
    into StorageApiError.status)."""
    body = {"statusCode": str(status), "error": error, "message": message}
    if code is not None:
        body["code"] = code
    return StorageJSON(body, status_code=400)


def _not_found() -> JSONResponse:
    return storage_error(404, "not_found", "Object not found", "NoSuchKey")


def _duplicate() -> JSONResponse:
    return storage_error(409, "Duplicate", "The resource already exists", "KeyAlreadyExists")


def _bad_signed_url() -> JSONResponse:
    return storage_error(400, "InvalidSignature", "invalid signature or expired URL", "InvalidSignature")


def _refused_by_rls() -> JSONResponse:
    return storage_error(403, "Unauthorized", "new row violates row-level security policy", "AccessDenied")


class NoRobots:
    """Storage answers every request with ``x-robots-tag: none``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-robots-tag", b"none"))
            await send(message)

        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


class LocalStorage:
    """The bucket and object state, with files under root."""

    def __init__(self, root: Path, keys: LocalKeys) -> None:
        self.root = root
        self.keys = keys
        self.buckets: dict[str, Bucket] = {}
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.writes: Counter[tuple[str, str]] = Counter()  # uploads per object, for tests
        self.upload_url_lifetime_s = 2 * 3600  # as Storage makes them
        self.expired_upload_urls = 0  # tests: the next N upload URLs are signed already expired

    def path_of(self, bucket: str, name: str) -> Path:
        return self.root / bucket / name

    def role(self, request: Request) -> str | None:
        """The caller's verified role; None when there is no token or its signature fails."""
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return self.keys.role_of(token) if token else None

    def _caller(self, request: Request) -> str | Response:
        """The verified role, or the answer Storage gives a missing or forged key."""
        role = self.role(request)
        if role is None:
            return storage_error(403, "Unauthorized", "signature verification failed", "InvalidJWT")
        return role

    def app(self) -> Starlette:
        routes = [
            Route("/object/sign/{bucket}/{name:path}", self.sign, methods=["POST"]),
            Route("/object/sign/{bucket}/{name:path}", self.download_signed, methods=["GET", "HEAD"]),
            Route("/object/upload/sign/{bucket}/{name:path}", self.sign_upload, methods=["POST"]),
            Route("/object/upload/sign/{bucket}/{name:path}", self.upload_signed, methods=["PUT"]),
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
        return Starlette(routes=[Mount("/storage/v1", app=NoRobots(Starlette(routes=routes)))])

    # ---- buckets ---------------------------------------------------------------------
    async def list_buckets(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return storage_error(403, "Unauthorized", "listing buckets needs the service role key")
        return StorageJSON([bucket.as_json() for bucket in self.buckets.values()])

    async def get_bucket(self, request: Request) -> Response:
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found", "NoSuchBucket")
        return StorageJSON(bucket.as_json())

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
        return StorageJSON({"name": bucket_id})

    def add_bucket(self, bucket: Bucket) -> None:
        self.buckets[bucket.id] = bucket
        (self.root / bucket.id).mkdir(parents=True, exist_ok=True)

    # ---- objects ---------------------------------------------------------------------
    def _target(self, request: Request) -> tuple[Bucket, str] | Response:
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found", "NoSuchBucket")
        name = request.path_params.get("name", "")
        parts = PurePosixPath(name).parts
        if not name or ".." in parts or name.startswith("/"):
            return storage_error(400, "InvalidKey", f"Invalid key: {name}", "InvalidKey")
        return bucket, name

    def _write_target(self, request: Request) -> tuple[Bucket, str] | Response:
        """The object a write names, if the caller may write it: only the service role may
        (no storage.objects policy grants a write)."""
        caller = self._caller(request)
        if isinstance(caller, Response):
            return caller
        if caller != "service_role":
            return _refused_by_rls()
        return self._target(request)

    async def upload(self, request: Request) -> Response:
        target = self._write_target(request)
        if isinstance(target, Response):
            return target
        upsert = request.method == "PUT" or request.headers.get("x-upsert", "").lower() == "true"
        return await self._store(request, *target, upsert)

    async def _store(self, request: Request, bucket: Bucket, name: str, upsert: bool) -> Response:
        content, content_type, cache_control = await self._read_upload(request)
        if (bucket.id, name) in self.objects and not upsert:
            return _duplicate()
        if bucket.allowed_mime_types and content_type not in bucket.allowed_mime_types:
            return storage_error(
                415, "invalid_mime_type", f"mime type {content_type} is not supported", "InvalidMimeType"
            )
        if bucket.file_size_limit is not None and len(content) > bucket.file_size_limit:
            return storage_error(
                413, "Payload too large", "The object exceeded the maximum allowed size", "EntityTooLarge"
            )
        path = self.path_of(bucket.id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        partial.write_bytes(content)
        partial.replace(path)  # readers never see half a file
        stored = StoredObject(
            str(uuid.uuid4()),
            content_type,
            len(content),
            cache_control,
            datetime.now(UTC).isoformat(),
            f'"{hashlib.md5(content).hexdigest()}"',
        )
        self.objects[(bucket.id, name)] = stored
        self.writes[(bucket.id, name)] += 1
        return StorageJSON({"Key": f"{bucket.id}/{name}", "Id": stored.id})

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
        caller = self._caller(request)
        if isinstance(caller, Response):
            return caller
        if caller != "service_role":
            return _refused_by_rls()
        body = await request.json()
        bucket_id, source, destination = (
            body.get("bucketId"),
            body.get("sourceKey"),
            body.get("destinationKey"),
        )
        stored = self.objects.get((bucket_id, source))
        if stored is None:
            return _not_found()
        if not destination or ".." in PurePosixPath(destination).parts:
            return storage_error(400, "InvalidKey", f"Invalid key: {destination}", "InvalidKey")
        target = self.path_of(bucket_id, destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.path_of(bucket_id, source).read_bytes())
        copied = StoredObject(
            str(uuid.uuid4()),
            stored.content_type,
            stored.size,
            stored.cache_control,
            datetime.now(UTC).isoformat(),
            stored.etag,
        )
        self.objects[(bucket_id, destination)] = copied
        return StorageJSON(
            {"Id": copied.id, "Key": f"{bucket_id}/{destination}", **copied.row(bucket_id, destination)}
        )

    async def download_public(self, request: Request) -> Response:
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None or not bucket.public:
            return storage_error(404, "not_found", "Bucket not found", "NoSuchBucket")
        return self._serve(request)

    async def download(self, request: Request) -> Response:
        caller = self._caller(request)
        if isinstance(caller, Response):
            return caller
        if caller != "service_role":
            return _not_found()  # RLS hides every object from the API roles: no select policy
        return self._serve(request)

    # ---- signed URLs -----------------------------------------------------------------
    async def sign(self, request: Request) -> Response:
        """A download URL for one object, valid expiresIn seconds: for whoever may read it."""
        caller = self._caller(request)
        if isinstance(caller, Response):
            return caller
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        if caller != "service_role" or (bucket.id, name) not in self.objects:
            return _not_found()
        body = await request.json()
        try:
            expires_in = int(body.get("expiresIn"))
        except (TypeError, ValueError):
            return storage_error(400, "invalid_request", "expiresIn: must be a number of seconds")
        token = self._url_token(f"{bucket.id}/{name}", expires_in)
        return StorageJSON({"signedURL": f"/object/sign/{bucket.id}/{name}?token={token}"})

    async def download_signed(self, request: Request) -> Response:
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        if self._url_claims(request, f"{bucket.id}/{name}") is None:
            return _bad_signed_url()
        return self._serve(request)

    async def sign_upload(self, request: Request) -> Response:
        """An upload URL for one key, valid two hours as Storage makes them: for the service role."""
        target = self._write_target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        upsert = request.headers.get("x-upsert", "").lower() == "true"
        if (bucket.id, name) in self.objects and not upsert:
            return _duplicate()
        lifetime_s = self.upload_url_lifetime_s
        if self.expired_upload_urls > 0:  # as if the job had waited hours in RunPod's queue
            self.expired_upload_urls -= 1
            lifetime_s = -1
        token = self._url_token(f"{bucket.id}/{name}", lifetime_s, upsert=upsert)
        return StorageJSON({"url": f"/object/upload/sign/{bucket.id}/{name}?token={token}", "token": token})

    async def upload_signed(self, request: Request) -> Response:
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        claims = self._url_claims(request, f"{bucket.id}/{name}")
        if claims is None:
            return _bad_signed_url()
        return await self._store(request, bucket, name, upsert=bool(claims.get("upsert")))

    def _url_token(self, url: str, expires_in_s: int, **claims: object) -> str:
        now = int(time.time())
        return self.keys.sign({"url": url, "iat": now, "exp": now + expires_in_s, **claims})

    def _url_claims(self, request: Request, url: str) -> dict[str, object] | None:
        """The signed URL's claims if its token was made for this very object and has not expired."""
        claims = self.keys.claims_of(request.query_params.get("token", ""))
        return claims if claims is not None and claims.get("url") == url else None

    def _serve(self, request: Request) -> Response:
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        stored = self.objects.get((bucket.id, name))
        if stored is None:
            return _not_found()
        headers = {"cache-control": f"max-age={stored.cache_control}", "etag": stored.etag}
        return FileResponse(self.path_of(bucket.id, name), media_type=stored.content_type, headers=headers)

    async def info(self, request: Request) -> Response:
        caller = self._caller(request)
        if isinstance(caller, Response):
            return caller
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        stored = self.objects.get((bucket.id, name))
        if stored is None or caller != "service_role":
            return _not_found()
        return StorageJSON(
            {
                **stored.as_json(name),
                "bucket_id": bucket.id,
                "version": stored.version,
                "size": stored.size,
                "content_type": stored.content_type,
                "cache_control": f"max-age={stored.cache_control}",
                "etag": stored.etag,
                "last_modified": stored.updated_at,
            }
        )

    async def list_objects(self, request: Request) -> Response:
        caller = self._caller(request)
        if isinstance(caller, Response):
            return caller
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found", "NoSuchBucket")
        if caller != "service_role":
            return StorageJSON([])  # RLS: no select policy, so no rows
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
        return StorageJSON(ordered[offset : offset + limit])

    async def remove_many(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return _refused_by_rls()
        bucket = self.buckets.get(request.path_params["bucket"])
        if bucket is None:
            return storage_error(404, "not_found", "Bucket not found", "NoSuchBucket")
        body = await request.json()
        removed = [self._remove(bucket.id, str(name)) for name in body.get("prefixes", [])]
        return StorageJSON([entry for entry in removed if entry is not None])

    async def remove_one(self, request: Request) -> Response:
        if self.role(request) != "service_role":
            return _refused_by_rls()
        target = self._target(request)
        if isinstance(target, Response):
            return target
        bucket, name = target
        if self._remove(bucket.id, name) is None:
            return _not_found()
        return StorageJSON({"message": "Successfully deleted"})

    def _remove(self, bucket_id: str, name: str) -> dict[str, Any] | None:
        stored = self.objects.pop((bucket_id, name), None)
        if stored is None:
            return None
        self.path_of(bucket_id, name).unlink(missing_ok=True)
        return {**stored.as_json(name), "bucket_id": bucket_id}
