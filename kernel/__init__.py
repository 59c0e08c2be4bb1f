"""The shared kernel: what the dispatcher, the HTTP app and the local stack all stand on.

What belongs here is infrastructure with no opinion about images or jobs: the database
connection pool and the "act as this user" step, the database settings, the Postgres LISTEN
connection, structured logging, the pooled HTTP client, the /metrics route, reading a request
body within a limit, running uvicorn inside a process that owns its signals, supervising
background tasks, named SQL files, and the Supabase directory with its migrations.

What does not: anything that knows a job's states, RunPod, Storage or the functions' bodies.
The kernel imports nothing of this project above it (import-linter checks it: `make lint`).
"""
