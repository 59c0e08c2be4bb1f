-- Every path that finishes a job (or cancels or requeues one) locks its batch row
-- first, so they serialize per batch. They took FOR UPDATE, which also blocks the
-- FOR KEY SHARE lock that every foreign-key check on the batch takes: inserting any
-- event of the batch (claimed, submitted, ...) then waited for each finishing
-- transaction, and could deadlock with one. A claim or a mark_submitted holds a job
-- row and checks its event's batch; cancel_image_job holds the batch and waits for
-- that job row. FOR NO KEY UPDATE (what an UPDATE of non-key columns takes anyway)
-- still serializes the finishing paths and the event counter among themselves, and
-- lets foreign-key checks through. The bodies are otherwise unchanged.

create or replace function public.dispatcher_succeed_job(
  job uuid, owner text, image_url text, storage_path text, width integer, height integer,
  steps integer, seed bigint, timings jsonb, status_polls integer, reused_from uuid default null
) returns boolean
language plpgsql set search_path = '' as $$
declare
  finished public.image_jobs;
begin
  perform from public.image_batches b
   where b.id = (select batch_id from public.image_jobs where id = job) for no key update;
  update public.image_jobs j
     set status = 'succeeded', image_url = dispatcher_succeed_job.image_url,
         storage_path = dispatcher_succeed_job.storage_path, width = dispatcher_succeed_job.width,
         height = dispatcher_succeed_job.height, steps = dispatcher_succeed_job.steps,
         seed = dispatcher_succeed_job.seed, timings = dispatcher_succeed_job.timings,
         status_polls = j.status_polls + dispatcher_succeed_job.status_polls, error = null,
         finished_at = now(), lease_owner = null, lease_expires_at = null
   where j.id = job and j.lease_owner = owner and j.status in ('submitted', 'running')
  returning * into finished;
  if not found then
    return false;
  end if;
  insert into public.image_job_events (batch_id, job_id, kind, payload)
  values (finished.batch_id, finished.id, 'image', jsonb_build_object(
    'job_id', finished.id, 'position', finished.position, 'url', finished.image_url,
    'seed', finished.seed, 'reused_from', reused_from));
  perform public.image_batch_progress(finished.batch_id);
  return true;
end
$$;

create or replace function public.dispatcher_fail_job(
  job uuid, owner text, error text, retryable boolean, status_polls integer,
  backoff_base_s double precision default 2, backoff_max_s double precision default 60
) returns text
language plpgsql set search_path = '' as $$
declare
  current public.image_jobs;
  delay_s double precision;
begin
  perform from public.image_batches b
   where b.id = (select batch_id from public.image_jobs where id = job) for no key update;
  select * into current from public.image_jobs j
   where j.id = job and j.lease_owner = owner and j.status in ('submitted', 'running') for no key update;
  if not found then
    return null;
  end if;
  if retryable and current.attempts < current.max_attempts then
    delay_s := least(backoff_base_s * 2 ^ (current.attempts - 1), backoff_max_s) * (0.5 + random() / 2);
    update public.image_jobs j
       set status = 'queued', error = dispatcher_fail_job.error, run_after = now() + make_interval(secs => delay_s),
           lease_owner = null, lease_expires_at = null, runpod_job_id = null, runpod_endpoint_id = null,
           status_polls = j.status_polls + dispatcher_fail_job.status_polls
     where j.id = job;
    insert into public.image_job_events (batch_id, job_id, kind, payload)
    values (current.batch_id, job, 'retrying', jsonb_build_object(
      'job_id', job, 'position', current.position, 'attempt', current.attempts,
      'error', dispatcher_fail_job.error, 'retry_in_s', round(delay_s::numeric, 2)));
    return 'queued';
  end if;
  update public.image_jobs j
     set status = 'failed', error = dispatcher_fail_job.error, finished_at = now(),
         lease_owner = null, lease_expires_at = null,
         status_polls = j.status_polls + dispatcher_fail_job.status_polls
   where j.id = job;
  insert into public.image_job_events (batch_id, job_id, kind, payload)
  values (current.batch_id, job, 'failed', jsonb_build_object(
    'job_id', job, 'position', current.position, 'error', dispatcher_fail_job.error,
    'attempts', current.attempts));
  perform public.image_batch_progress(current.batch_id);
  return 'failed';
end
$$;

create or replace function public.cancel_image_job(job_id uuid) returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  cancelled public.image_jobs;
begin
  perform from public.image_batches b
   where b.id = (select j.batch_id from public.image_jobs j
                  where j.id = cancel_image_job.job_id and j.user_id = auth.uid())
     for no key update;
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
  perform public.image_batch_progress(cancelled.batch_id);
  return true;
end
$$;

create or replace function public.requeue_failed_jobs(
  batch_id uuid default null,
  job_ids uuid[] default null,
  failed_since timestamptz default null
) returns integer
language plpgsql set search_path = '' as $$
declare
  requeued_count integer;
  batches uuid[];
  batch uuid;
begin
  if batch_id is null and job_ids is null and failed_since is null then
    raise exception using errcode = 'invalid_parameter_value',
      message = 'requeue_failed_jobs: give a batch_id, job_ids or failed_since';
  end if;
  perform from public.image_batches b
   where b.id in (select j.batch_id from public.image_jobs j
                   where j.status = 'failed'
                     and (requeue_failed_jobs.batch_id is null or j.batch_id = requeue_failed_jobs.batch_id)
                     and (requeue_failed_jobs.job_ids is null or j.id = any (requeue_failed_jobs.job_ids))
                     and (requeue_failed_jobs.failed_since is null
                          or j.finished_at >= requeue_failed_jobs.failed_since))
   order by b.id
     for no key update;
  with requeued as (
    update public.image_jobs j
       set status = 'queued', attempts = 0, error = null, run_after = now(),
           lease_owner = null, lease_expires_at = null, runpod_endpoint_id = null,
           runpod_job_id = null, submitted_at = null, finished_at = null
      from public.image_jobs previous
     where j.id = previous.id
       and previous.status = 'failed'
       and (requeue_failed_jobs.batch_id is null or j.batch_id = requeue_failed_jobs.batch_id)
       and (requeue_failed_jobs.job_ids is null or j.id = any (requeue_failed_jobs.job_ids))
       and (requeue_failed_jobs.failed_since is null or j.finished_at >= requeue_failed_jobs.failed_since)
    returning j.id, j.batch_id, j.position, previous.error
  ), events as (
    insert into public.image_job_events (batch_id, job_id, kind, payload)
    select r.batch_id, r.id, 'requeued',
           jsonb_build_object('job_id', r.id, 'position', r.position, 'previous_error', r.error)
      from requeued r
     order by r.batch_id, r.position
    returning image_job_events.batch_id
  )
  select count(*), array_agg(distinct e.batch_id) into requeued_count, batches from events e;
  foreach batch in array coalesce(batches, '{}') loop
    perform public.image_batch_progress(batch);
  end loop;
  return requeued_count;
end
$$;
