-- What each dispatcher sees of RunPod (the workers its endpoints run, the jobs it holds), kept
-- fresh every few seconds, so that batch-status can say when a queued job should start and
-- finish. A row not refreshed for a while is a dispatcher that is gone: readers ignore it.
create table public.image_dispatchers (
  dispatcher_id text primary key check (length(dispatcher_id) between 1 and 200),
  workers integer not null check (workers >= 0),
  in_flight integer not null check (in_flight >= 0),
  updated_at timestamptz not null default now()
);

comment on table public.image_dispatchers is
  'Each live dispatcher''s RunPod capacity (workers) and jobs in flight, refreshed every few seconds.';

alter table public.image_dispatchers enable row level security;
revoke all on public.image_dispatchers from public, anon, authenticated, service_role;
grant all on public.image_dispatchers to service_role;

-- batch-status's execution times: the latest successes of one size, newest first.
create index image_jobs_recent_successes
  on public.image_jobs (quality, width, height, finished_at desc) where status = 'succeeded';
