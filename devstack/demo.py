"""``zimage demo``: what the pipeline does today, on a throwaway local database.

Today this proves the database half of the path: a batch inserted exactly as the
frontend inserts it (as an authenticated user, through RLS) becomes queued jobs
and a first progress event. The worker, the RunPod stand-in and the dispatcher
come with their issues; until then the jobs stay queued, and the demo says so.
"""

from __future__ import annotations

import json

import psycopg

from devstack.postgres import PostgresCluster
from dispatcher.schema import SUPABASE_DIR, apply_migrations, apply_shim

DEMO_USER = "00000000-0000-4000-8000-000000000001"
DEFAULT_PROMPTS = [
    "The signing of the Magna Carta at Runnymede, 1215, oil painting",
    "Roman legionaries building Hadrian's Wall, misty morning",
    "Apollo 11 lunar module on the Moon, 1969, photograph",
]


def run_demo(prompts: list[str]) -> int:
    prompts = prompts or DEFAULT_PROMPTS
    print("Starting a throwaway PostgreSQL cluster with the Supabase shim and migrations...")
    with PostgresCluster() as cluster, psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        apply_shim(admin)
        apply_migrations(admin)
        admin.execute((SUPABASE_DIR / "seed.sql").read_text())
        with psycopg.connect(cluster.dsn()) as frontend:
            frontend.execute("set local role authenticated")
            claims = json.dumps({"sub": DEMO_USER, "role": "authenticated"})
            frontend.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
            row = frontend.execute(
                "insert into image_batches (prompts, quality, aspect_ratio) values (%s, 'basic', '16:9')"
                " returning id",
                (prompts,),
            ).fetchone()
        assert row is not None
        print(f"Inserted batch {row[0]} as the demo user (RLS applied), as the frontend does.")
        for position, status, width, height, steps, prompt in admin.execute(
            "select position, status, width, height, steps, prompt from image_jobs order by position"
        ):
            print(f"  job {position}: {status:<7} {width}x{height}, {steps} steps  {prompt}")
        for kind, payload in admin.execute("select kind, payload from image_job_events order by id"):
            print(f"  event {kind}: {payload['message']}")
    print(
        "Not built yet: the RunPod worker, its local stand-in and the dispatcher, so no PNG is made "
        "and the jobs above stay queued. The cluster has been stopped and removed."
    )
    return 0
