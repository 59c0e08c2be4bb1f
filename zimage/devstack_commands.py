"""``zimage devstack up``: run the local stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devstack.stack import Devstack


def add_devstack_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devstack = commands.add_parser(
        "devstack",
        help="local stand-ins for Supabase and RunPod",
        description="Local stand-ins for the cloud services, for development, tests and benchmarks.",
    )
    actions = devstack.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up",
        help="start Postgres, the RunPod and Storage stand-ins, and workers, in the foreground",
        description="Start a throwaway Postgres (Supabase shim, migrations, seed), the RunPod stand-in "
        "with real workers (python -m worker under the runpod SDK) or synthetic ones, and the Supabase "
        "Storage and Realtime stand-ins, on free loopback ports. When ready, print one `export NAME=value` "
        "line per setting, then `ready`, so that `eval` can take them. Ctrl-C or SIGTERM stops everything.",
    )
    up.add_argument(
        "--synthetic",
        action="store_true",
        help="synthetic workers (a load generator: no torch, flat PNGs) instead of real ones",
    )
    up.add_argument("--workers", type=int, default=1, metavar="N", help="workers per endpoint (default 1)")
    up.add_argument(
        "--endpoints",
        type=int,
        default=1,
        metavar="N",
        help="RunPod endpoints to serve, for failover (default 1)",
    )
    up.add_argument(
        "--execution-time",
        default="0.5",
        metavar="SPEC",
        help="synthetic job time: SECONDS, uniform:LOW:HIGH or lognormal:MU:SIGMA (default 0.5)",
    )
    up.add_argument("--model-id", help="real workers' MODEL_ID (default: the tiny offline Z-Image pipeline)")
    up.add_argument(
        "--data-dir",
        type=Path,
        help="where stored objects and worker logs go (default: a new temporary directory)",
    )
    up.set_defaults(run=run_up)


def run_up(args: argparse.Namespace) -> int:
    import logging

    from devstack.stack import Devstack, DevstackConfig
    from kernel.logs import configure_logging

    configure_logging(logging.WARNING)  # on stderr: stdout is for the exports `eval` takes

    config = DevstackConfig(
        synthetic=args.synthetic,
        workers=args.workers,
        endpoints=args.endpoints,
        execution_time=args.execution_time,
        model_id=args.model_id,
        data_dir=args.data_dir,
    )
    return asyncio.run(_serve(Devstack(config)))


async def _serve(stack: Devstack) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stack.start()
        _describe(stack)
        for name, value in stack.environment().items():
            print(f"export {name}={shlex.quote(value)}")
        print("ready", flush=True)
        await stopping.wait()
    finally:
        await stack.stop()
    print("devstack: stopped", file=sys.stderr)
    return 0


def _describe(stack: Devstack) -> None:
    print(f"devstack: {stack.describe_workers()}", file=sys.stderr)
    print(f"devstack: stored objects under {stack.storage.root}", file=sys.stderr)
