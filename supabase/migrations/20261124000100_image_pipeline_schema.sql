-- The image pipeline's tables: image_batches is what the frontend writes,
-- image_jobs is the dispatcher's queue (one row per prompt), and
-- image_job_events is the append-only progress log that SSE replays.

create table public.image_batches (
  id uuid primary key default gen_random_uuid(),
  -- null for batches created with the anon key (visible to admins only)
  user_id uuid default auth.uid() references auth.users (id) on delete cascade,
  prompts text[] not null,
  quality text not null default 'basic',
  aspect_ratio text not null default '16:9',
  seed bigint,
  project_id text,
  -- per prompt {index, startTime, endTime}, from the frontend's timed prompts
  timings jsonb,
  created_at timestamptz not null default now()
);
create index image_batches_user_id_idx on public.image_batches (user_id, created_at desc);

create table public.image_jobs (
  id uuid primary key default gen_random_uuid(),
  batch_id uuid not null references public.image_batches (id) on delete cascade,
  user_id uuid references auth.users (id) on delete cascade,
  position integer not null check (position >= 0),
  prompt text not null,
  quality text not null,
  aspect_ratio text not null,
  seed bigint,
  status text not null default 'queued' check (
    status in ('queued', 'submitted', 'running', 'succeeded', 'failed', 'cancelled')
  ),
  attempts integer not null default 0 check (attempts >= 0),
  max_attempts integer not null default 3 check (max_attempts > 0),
  error text,
  image_url text,
  storage_path text,
  width integer not null,
  height integer not null,
  steps integer not null,
  -- the dispatcher's bookkeeping
  run_after timestamptz not null default now(),
  lease_owner text,
  lease_expires_at timestamptz,
  runpod_endpoint_id text,
  runpod_job_id text,
  timings jsonb,
  submitted_at timestamptz,
  finished_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (batch_id, position)
);
-- The claim reads only queued rows that are due; expired leases are found
-- among the in-flight ones.
create index image_jobs_queued_idx on public.image_jobs (run_after) where status = 'queued';
create index image_jobs_in_flight_idx on public.image_jobs (lease_expires_at)
  where status in ('submitted', 'running');
create index image_jobs_user_id_idx on public.image_jobs (user_id, status);

create table public.image_job_events (
  id bigint generated always as identity primary key,
  batch_id uuid not null references public.image_batches (id) on delete cascade,
  job_id uuid references public.image_jobs (id) on delete cascade,
  kind text not null,
  payload jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);
create index image_job_events_batch_idx on public.image_job_events (batch_id, id);

-- Validation with messages that name the field: the frontend inserts directly,
-- so the database is where bad input is refused.
create function public.image_batches_validate() returns trigger
language plpgsql set search_path = '' as $$
declare
  n integer := coalesce(cardinality(new.prompts), 0);
  i integer;
begin
  if n = 0 then
    raise exception using errcode = 'check_violation',
      message = 'prompts: at least 1 prompt is required';
  end if;
  if array_ndims(new.prompts) <> 1 then
    raise exception using errcode = 'check_violation',
      message = 'prompts: must be a flat list of strings';
  end if;
  if n > 100 then
    raise exception using errcode = 'check_violation',
      message = format('prompts: at most 100 prompts per batch, got %s', n);
  end if;
  for i in 1 .. n loop
    if new.prompts[i] is null or new.prompts[i] ~ '^\s*$' then
      raise exception using errcode = 'check_violation',
        message = format('prompts[%s]: prompt is empty or blank', i - 1);
    end if;
    if char_length(new.prompts[i]) > 1000 then
      raise exception using errcode = 'check_violation',
        message = format('prompts[%s]: prompt is %s characters long, the limit is 1000',
                         i - 1, char_length(new.prompts[i]));
    end if;
  end loop;
  if new.quality is null or new.quality not in ('basic', 'high') then
    raise exception using errcode = 'check_violation',
      message = format('quality: must be "basic" or "high", got %s', coalesce(quote_literal(new.quality), 'null'));
  end if;
  if new.aspect_ratio is null or new.aspect_ratio not in ('16:9', '1:1', '9:16') then
    raise exception using errcode = 'check_violation',
      message = format('aspect_ratio: must be "16:9", "1:1" or "9:16", got %s',
                       coalesce(quote_literal(new.aspect_ratio), 'null'));
  end if;
  if new.seed is not null and new.seed not between 0 and 4294967295 then
    raise exception using errcode = 'check_violation',
      message = format('seed: must be between 0 and 4294967295, got %s', new.seed);
  end if;
  if new.timings is not null
     and (jsonb_typeof(new.timings) <> 'array' or jsonb_array_length(new.timings) <> n) then
    raise exception using errcode = 'check_violation',
      message = 'timings: must be a list with one {index, startTime, endTime} per prompt';
  end if;
  return new;
end
$$;

create trigger image_batches_validate
  before insert or update on public.image_batches
  for each row execute function public.image_batches_validate();

-- One job per prompt, in the same transaction as the batch. Security definer:
-- the frontend may insert batches but never jobs.
create function public.image_batches_create_jobs() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  n integer := cardinality(new.prompts);
begin
  insert into public.image_jobs
    (batch_id, user_id, position, prompt, quality, aspect_ratio, seed, width, height, steps)
  select new.id, new.user_id, p.ordinality - 1,
         regexp_replace(p.prompt, '^\s+|\s+$', '', 'g'),
         new.quality, new.aspect_ratio, new.seed,
         case new.aspect_ratio when '9:16' then 576 else 1024 end,
         case new.aspect_ratio when '16:9' then 576 else 1024 end,
         case new.quality when 'high' then 16 else 9 end
  from unnest(new.prompts) with ordinality as p (prompt, ordinality);

  insert into public.image_job_events (batch_id, kind, payload)
  values (new.id, 'progress', jsonb_build_object(
    'completed', 0, 'failed', 0, 'total', n,
    'message', format('Creating %s image jobs...', n)));
  return null;
end
$$;

create trigger image_batches_create_jobs
  after insert on public.image_batches
  for each row execute function public.image_batches_create_jobs();

create function public.image_jobs_touch() returns trigger
language plpgsql set search_path = '' as $$
begin
  new.updated_at := now();
  return new;
end
$$;

create trigger image_jobs_touch
  before update on public.image_jobs
  for each row execute function public.image_jobs_touch();

-- Wake-ups. NOTIFY takes a database-wide lock at commit, so these fire once
-- per statement, and a constant payload lets Postgres fold repeats within a
-- transaction into one notification. They only wake: the table decides.
create function public.image_jobs_notify_queued() returns trigger
language plpgsql set search_path = '' as $$
begin
  if exists (select from new_rows where status = 'queued') then
    perform pg_notify('image_jobs_queued', '');
  end if;
  return null;
end
$$;

create trigger image_jobs_notify_inserted
  after insert on public.image_jobs
  referencing new table as new_rows
  for each statement execute function public.image_jobs_notify_queued();

create trigger image_jobs_notify_requeued
  after update on public.image_jobs
  referencing new table as new_rows
  for each statement execute function public.image_jobs_notify_queued();

-- Each new event is announced with ids only (NOTIFY payloads cap at 8000 bytes):
-- one notification per batch per statement, carrying the newest event id.
create function public.image_job_events_notify() returns trigger
language plpgsql set search_path = '' as $$
begin
  perform pg_notify('image_job_events',
                    json_build_object('batch_id', batch_id, 'id', max(id))::text)
  from new_rows group by batch_id;
  return null;
end
$$;

create trigger image_job_events_notify
  after insert on public.image_job_events
  referencing new table as new_rows
  for each statement execute function public.image_job_events_notify();

-- A user may cancel their own unfinished job; nothing else about a job is
-- theirs to change. The dispatcher sees the state change and cancels the RunPod job.
create function public.cancel_image_job(job_id uuid) returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  cancelled public.image_jobs;
begin
  update public.image_jobs j
     set status = 'cancelled', finished_at = now(), lease_owner = null, lease_expires_at = null
   where j.id = cancel_image_job.job_id
     and j.user_id = auth.uid()
     and j.status in ('queued', 'submitted', 'running')
  returning * into cancelled;
  if not found then
    return false;
  end if;
  insert into public.image_job_events (batch_id, job_id, kind, payload)
  values (cancelled.batch_id, cancelled.id, 'cancelled',
          jsonb_build_object('job_id', cancelled.id, 'position', cancelled.position));
  return true;
end
$$;

-- Admin: requeue failed jobs by batch, by ids, or all failed since a time
-- (filters combine). Idempotent: a job that is no longer failed is left alone.
create function public.requeue_failed_jobs(
  batch_id uuid default null,
  job_ids uuid[] default null,
  failed_since timestamptz default null
) returns integer
language plpgsql set search_path = '' as $$
declare
  requeued_count integer;
begin
  if batch_id is null and job_ids is null and failed_since is null then
    raise exception using errcode = 'invalid_parameter_value',
      message = 'requeue_failed_jobs: give a batch_id, job_ids or failed_since';
  end if;
  with target as (
    select j.id, j.error
      from public.image_jobs j
     where j.status = 'failed'
       and (requeue_failed_jobs.batch_id is null or j.batch_id = requeue_failed_jobs.batch_id)
       and (requeue_failed_jobs.job_ids is null or j.id = any (requeue_failed_jobs.job_ids))
       and (requeue_failed_jobs.failed_since is null or j.finished_at >= requeue_failed_jobs.failed_since)
       for update
  ), requeued as (
    update public.image_jobs j
       set status = 'queued', attempts = 0, error = null, run_after = now(),
           lease_owner = null, lease_expires_at = null, runpod_endpoint_id = null,
           runpod_job_id = null, submitted_at = null, finished_at = null
      from target
     where j.id = target.id
    returning j.id, j.batch_id, j.position, target.error
  ), events as (
    insert into public.image_job_events (batch_id, job_id, kind, payload)
    select r.batch_id, r.id, 'requeued',
           jsonb_build_object('job_id', r.id, 'position', r.position, 'previous_error', r.error)
      from requeued r
    returning 1
  )
  select count(*) into requeued_count from events;
  return requeued_count;
end
$$;
