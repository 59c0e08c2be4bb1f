"""GET /functions/v1/batches: the caller's batches, newest first, a page at a time (an admin:
everyone's). ``?limit=`` (default 20) and ``?before=`` (the previous page's ``next``). Each
batch with its counts by state; its jobs are batch-status's."""

from __future__ import annotations

from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import FunctionContext
from api.errors import HttpError
from api.links import base_url, batch_links
from api.paging import next_cursor, page_params, paged_operation
from api.queries import QUERIES

METHODS = ["GET"]
OPENAPI = {
    "get": paged_operation(
        "listBatches", "The caller's batches, newest first (an admin: everyone's)", "batches"
    )
}


async def handle(request: Request, ctx: FunctionContext) -> Response:
    caller = await ctx.caller(request)
    if not caller.is_admin and caller.user_id is None:
        raise HttpError(403, "sign in to list your batches: the anon key's belong to nobody")
    params = page_params(request)
    async with ctx.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            QUERIES["list_batches"], {**params, "user_id": None if caller.is_admin else caller.user_id}
        )
        rows = await cursor.fetchall()
    base = base_url(request, ctx.settings.public_url)
    counts = ("succeeded", "failed", "cancelled")
    return JSONResponse(
        {
            "batches": [
                {
                    "batch_id": str(row["id"]),
                    "created_at": row["created_at"].isoformat(),
                    "quality": row["quality"],
                    "aspectRatio": row["aspect_ratio"],
                    "format": row["format"],
                    "projectId": row["project_id"],
                    "total": row["total"],
                    "counts": row["counts"],
                    "done": sum(row["counts"].get(state, 0) for state in counts) == row["total"],
                    **batch_links(base, row["id"]),
                }
                for row in rows
            ],
            "next": next_cursor(rows, params["limit"], "created_at"),
        }
    )
