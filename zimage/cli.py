"""The ``zimage`` command line: one entry point, one subcommand per task.

The composition root: the only package that imports the dispatcher, the app and the local stack
together, to wire them into processes (zimage.processes) and commands."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import psycopg
from pydantic import ValidationError

from kernel.schema import apply_migrations, apply_shim
from kernel.settings import configuration_errors, load_database_settings
from kernel.supervisor import ServiceFailed

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def run_service(main: Coroutine[Any, Any, None], fast_loop: bool = False) -> None:
    """Run a long-running service. ``fast_loop``: on uvloop where it is installed (``zimage http``,
    whose SSE fan-out is loop-bound; the README has the figures)."""
    # What is loaded by now (modules, settings) lives as long as the process: freezing it keeps
    # every full collection from walking it again (the README says what it saves).
    gc.collect()
    gc.freeze()
    if fast_loop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def _migrate(args: argparse.Namespace) -> int:
    settings = load_database_settings()
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        if args.shim:  # a local cluster's superuser: the migrations then run as postgres
            apply_shim(conn)
            print("applied the local Supabase shim")
        applied = apply_migrations(conn, role="postgres" if args.shim else None)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'already up to date'}")
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    from dispatcher.settings import load_dispatcher_settings
    from kernel.logs import configure_logging
    from zimage.processes import serve_dispatcher

    settings = load_dispatcher_settings()
    configure_logging()
    run_service(serve_dispatcher(settings, args.host, args.port))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from api.settings import load_api_settings
    from dispatcher.settings import load_dispatcher_settings
    from kernel.logs import configure_logging
    from zimage.processes import serve

    api_settings = load_api_settings()
    dispatcher_settings = load_dispatcher_settings() if args.command == "serve" else None
    configure_logging()
    run_service(
        serve(api_settings, dispatcher_settings, args.host, args.port), fast_loop=args.command == "http"
    )
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    import logging

    from kernel.logs import configure_logging
    from zimage.demo import run_demo

    configure_logging(logging.WARNING)  # the demo prints its own story; logs only for trouble
    return run_demo(args.prompt, args.synthetic, args.data_dir, args.keep, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zimage", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser(
        "migrate",
        help="apply supabase/migrations to DATABASE_URL",
        description="Apply the migrations not yet recorded in supabase_migrations.schema_migrations "
        "(the Supabase CLI's history table) to DATABASE_URL. On Supabase itself prefer "
        "`supabase db push`; both read the same history.",
    )
    migrate.add_argument(
        "--shim",
        action="store_true",
        help="first apply supabase/local/shim.sql (roles, auth, storage) - vanilla Postgres only, "
        "never a Supabase project",
    )
    migrate.set_defaults(run=_migrate)

    dispatch = commands.add_parser(
        "dispatch",
        help="run the dispatcher (with its webhook, /healthz and /metrics routes)",
        description="Claim image jobs from DATABASE_URL, run them on RunPod, store the PNGs in Supabase "
        "Storage, until SIGTERM or Ctrl-C (then jobs in flight get a grace period and the rest are handed "
        "back). Configured by the environment; see the README's configuration table.",
    )
    _add_address(dispatch)
    dispatch.set_defaults(run=_dispatch)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP app and the dispatcher in one process",
        description="Serve the functions (/functions/v1/generate-images, batch-events, batch-status, "
        "retry-failed), the progress page at /, /healthz, /metrics and the RunPod webhook, and run the "
        "dispatcher beside them, until SIGTERM or Ctrl-C. Configured by the environment (the variables "
        "`zimage devstack up` prints, or the cloud's); see the README's configuration table.",
    )
    _add_address(serve)
    serve.set_defaults(run=_serve)

    http = commands.add_parser(
        "http",
        help="run the HTTP app alone (no dispatcher)",
        description="Serve the functions, the progress page, /healthz and /metrics without a dispatcher "
        "(run one with `zimage dispatch` elsewhere), until SIGTERM or Ctrl-C.",
    )
    _add_address(http)
    http.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo",
        help="run the pipeline locally end to end",
        description="Start the local stack (Postgres with the shim and migrations, the RunPod stand-in with "
        "real workers on the tiny offline Z-Image pipeline - or on MODEL_ID's weights - and the Storage "
        "stand-in), the app and the dispatcher; submit the prompts through generate-images as the frontend "
        "does, draw the batch's progress, and list the stored PNGs, their URLs and the progress page. Exit 0 "
        "when every image was stored. Nothing is left running afterwards (with --keep: after Ctrl-C).",
    )
    demo.add_argument("prompt", nargs="*", help="prompts to submit (a few history scenes by default)")
    demo.add_argument(
        "--synthetic",
        action="store_true",
        help="synthetic workers (flat PNGs, no model) instead of the real worker",
    )
    demo.add_argument(
        "--data-dir", type=Path, help="where the PNGs are written (default: a temporary directory)"
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep everything running afterwards, for the page, until Ctrl-C"
    )
    demo.add_argument("--port", type=int, default=0, help="the app's port (default: a free one)")
    demo.set_defaults(run=_demo)

    from zimage.characters import add_character_commands
    from zimage.devstack_commands import add_devstack_commands
    from zimage.operator_commands import add_operator_commands

    add_operator_commands(commands)
    add_character_commands(commands)
    add_devstack_commands(commands)
    return parser


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ValidationError as exc:
        for line in configuration_errors(exc):
            print(f"zimage: configuration error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except psycopg.OperationalError as exc:
        print(f"zimage: cannot reach the database: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ServiceFailed as exc:  # the orchestrator restarts the process
        print(f"zimage: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
