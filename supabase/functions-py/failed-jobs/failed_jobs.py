"""GET /functions/v1/failed-jobs (admins): failed jobs across users, newest first, a page at a
time (``?limit=``, ``?before=``), with their reasons; retry-failed requeues them."""

from __future__ import annotations

from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import FunctionContext
from api.paging import next_cursor, page_params, paged_operation
from api.queries import QUERIES

METHODS = ["GET"]
OPENAPI = {
    "get": paged_operation("listFailedJobs", "Failed jobs across users, newest first (admins)", "jobs")
}


async def handle(request: Request, ctx: FunctionContext) -> Response:
    ctx.admin_only(await ctx.caller(request))
    params = page_params(request)
    async with ctx.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(QUERIES["list_failed_jobs"], params)
        rows = await cursor.fetchall()
    return JSONResponse(
        {
            "jobs": [
                {
                    "job_id": str(row["id"]),
                    "batch_id": str(row["batch_id"]),
                    "user_id": str(row["user_id"]) if row["user_id"] else None,
                    "position": row["position"],
                    "prompt": row["prompt"],
                    "error": row["error"],
                    "attempts": row["attempts"],
                    "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
                }
                for row in rows
            ],
            "next": next_cursor(rows, params["limit"], "finished_at"),
        }
    )
