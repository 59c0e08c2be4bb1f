-- The dispatcher's side of the state machine, in SQL: every transition is one
-- guarded UPDATE (expected state and lease owner) that writes its event in the
-- same transaction. Finishing a job locks its batch row first, so two jobs of one
-- batch finishing at once cannot both miss (or both write) the batch's "complete".

alter table public.image_jobs
  add column started_at timestamptz,
  add column status_polls integer not null default 0,
  add column resubmissions integer not null default 0;

-- Reuse: an explicit seed makes an image reproducible, so an identical request
-- can take the stored image instead of a GPU run.
create index image_jobs_reuse_idx on public.image_jobs (md5(prompt), quality, aspect_ratio, seed)
  where status = 'succeeded' and seed is not null;

-- Progress of a batch after one of its jobs finished; "complete" once all have,
-- once per generation (a retry of failed jobs starts a new one).
create function public.image_batch_progress(batch uuid) returns void
language plpgsql set search_path = '' as $$
declare
  total integer;
  succeeded integer;
  failed integer;
  unfinished integer;
begin
  select count(*),
         count(*) filter (where status = 'succeeded'),
         count(*) filter (where status in ('failed', 'cancelled')),
         count(*) filter (where status not in ('succeeded', 'failed', 'cancelled'))
    into total, succeeded, failed, unfinished
    from public.image_jobs where batch_id = batch;
  insert into public.image_job_events (batch_id, kind, payload)
  values (batch, 'progress', jsonb_build_object(
    'completed', succeeded, 'failed', failed, 'total', total,
    'message', format('%s/%s images done', succeeded + failed, total)));
  if unfinished = 0 and not exists (
    select from public.image_job_events e
     where e.batch_id = batch and e.kind = 'complete'
       and e.id > coalesce((select max(r.id) from public.image_job_events r
                             where r.batch_id = batch and r.kind = 'requeued'), 0)
  ) then
    insert into public.image_job_events (batch_id, kind, payload)
    select batch, 'complete', jsonb_build_object(
             'success', succeeded > 0, 'total', total, 'failed', failed,
             'images', coalesce(jsonb_agg(j.image_url order by j.position)
                                  filter (where j.status = 'succeeded'), '[]'::jsonb))
      from public.image_jobs j where j.batch_id = batch;
  end if;
end
$$;

-- queued -> ... -> succeeded, only by the lease owner of an unfinished job.
create function public.dispatcher_succeed_job(
  job uuid, owner text, image_url text, storage_path text, width integer, height integer,
  steps integer, seed bigint, timings jsonb, status_polls integer, reused_from uuid default null
) returns boolean
language plpgsql set search_path = '' as $$
declare
  finished public.image_jobs;
begin
  perform from public.image_batches b
   where b.id = (select batch_id from public.image_jobs where id = job) for update;
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

-- A failed attempt: retried after a jittered exponential backoff while attempts
-- remain and the error is retryable, otherwise the job fails with the reason.
create function public.dispatcher_fail_job(
  job uuid, owner text, error text, retryable boolean, status_polls integer,
  backoff_base_s double precision default 2, backoff_max_s double precision default 60
) returns text
language plpgsql set search_path = '' as $$
declare
  current public.image_jobs;
  delay_s double precision;
begin
  perform from public.image_batches b
   where b.id = (select batch_id from public.image_jobs where id = job) for update;
  select * into current from public.image_jobs j
   where j.id = job and j.lease_owner = owner and j.status in ('submitted', 'running') for update;
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

revoke all on function public.image_batch_progress(uuid),
  public.dispatcher_succeed_job(uuid, text, text, text, integer, integer, integer, bigint, jsonb, integer, uuid),
  public.dispatcher_fail_job(uuid, text, text, boolean, integer, double precision, double precision)
  from public, anon, authenticated;
grant execute on function public.image_batch_progress(uuid),
  public.dispatcher_succeed_job(uuid, text, text, text, integer, integer, integer, bigint, jsonb, integer, uuid),
  public.dispatcher_fail_job(uuid, text, text, boolean, integer, double precision, double precision)
  to service_role;
