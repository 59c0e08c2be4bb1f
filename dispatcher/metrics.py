"""Prometheus metrics of the dispatcher (served at /metrics by the HTTP app)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_FINISHED = Counter("zimage_jobs_finished_total", "Jobs finished, by outcome", ["outcome"])
OUTBOUND_WEBHOOKS = Counter(
    "zimage_outbound_webhook_attempts_total",
    "Outbound webhook attempts, by outcome (delivered, retrying, given_up)",
    ["outcome"],
)
JOBS_IN_FLIGHT = Gauge("zimage_jobs_in_flight", "Jobs this dispatcher holds a lease on")
RUNPOD_CALLS = Counter(
    "zimage_runpod_calls_total", "Calls to RunPod, by route and status", ["route", "status"]
)
STATUS_POLLS_PER_JOB = Histogram(
    "zimage_status_polls_per_job",
    "RunPod /status calls a finished job cost",
    buckets=(0, 1, 2, 3, 5, 8, 13, 21),
)
INSERT_TO_SUBMIT = Histogram(
    "zimage_insert_to_submit_seconds",
    "From the job row's insert to its RunPod submit answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COMPLETION_TO_STORED = Histogram(
    "zimage_completion_to_stored_seconds",
    "From learning RunPod finished a job to its row being succeeded",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RESUBMISSIONS = Counter("zimage_resubmissions_total", "Jobs submitted again, by reason", ["reason"])
ENDPOINT_PAUSED = Gauge(
    "zimage_runpod_endpoint_paused",
    "1 while a RunPod endpoint refuses the API key (401/403): its jobs wait in Postgres",
    ["endpoint_id"],
)
WEBHOOKS_REFUSED = Counter(
    "zimage_runpod_webhooks_refused_total", "RunPod webhook calls refused, by reason", ["reason"]
)
WEBHOOKS_ACCEPTED = Counter(
    "zimage_runpod_webhooks_accepted_total",
    "RunPod webhook calls taken: delivered to a job here, or forwarded to the replica running it",
    ["outcome"],
)
