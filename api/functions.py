"""Loading the functions in supabase/functions-py/ and serving each at /functions/v1/<name>.

One folder per function, as Supabase lays out supabase/functions/<name>/; the
folder's module (``generate-images/generate_images.py``) defines ``METHODS`` and
``async def handle(request, ctx)``. Errors a function raises as HttpError become
``{"success": false, "error": ...}`` with their status.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.context import FunctionContext
from api.errors import HttpError
from kernel.schema import SUPABASE_DIR

FUNCTIONS_DIR = SUPABASE_DIR / "functions-py"

Handler = Callable[[Request, FunctionContext], Awaitable[Response]]


def load_functions(directory: Path = FUNCTIONS_DIR) -> dict[str, ModuleType]:
    functions: dict[str, ModuleType] = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and p.name[0] not in "._"):
        module_name = folder.name.replace("-", "_")
        spec = importlib.util.spec_from_file_location(
            f"functions_py.{module_name}", folder / f"{module_name}.py"
        )
        if spec is None or spec.loader is None:
            raise RuntimeError(f"{folder}: expected {module_name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "handle", None)) or not hasattr(module, "METHODS"):
            raise RuntimeError(f"{folder / module_name}.py must define METHODS and handle(request, ctx)")
        functions[folder.name] = module
    return functions


def function_routes(context: FunctionContext, functions: dict[str, ModuleType]) -> list[Route]:
    return [
        Route(f"/functions/v1/{name}", _endpoint(module.handle, context), methods=list(module.METHODS))
        for name, module in functions.items()
    ]


def _endpoint(handle: Handler, context: FunctionContext) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handle(request, context)
        except HttpError as error:
            return error.response()

    return endpoint
