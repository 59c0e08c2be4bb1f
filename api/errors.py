"""Errors a function answers with: a status and a message, as ``{"success": false, "error": ...}``
(the shape the old edge function's client reads)."""

from __future__ import annotations

from starlette.responses import JSONResponse


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"success": False, "error": self.message}, status_code=self.status, headers=self.headers
        )
