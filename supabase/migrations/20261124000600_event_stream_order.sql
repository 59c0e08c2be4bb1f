-- The progress stream (SSE) resumes after Last-Event-ID, so the events people
-- see need a position that is gapless and in commit order within their batch.
-- The global identity is neither: ids are taken at insert, transactions commit
-- in any order, and a reader that saw id 11 would skip an id 10 committed later.
--
-- So each visible event takes the next number of its batch from a counter on
-- the batch row. The UPDATE that takes it holds the batch's row lock until
-- commit, so the next writer of that batch waits and reads the committed value:
-- per batch, seq order is commit order. The dispatcher's bookkeeping events
-- (claimed, submitted, running, ...) are not streamed and take no lock.

alter table public.image_batches add column last_event_seq integer not null default 0;
alter table public.image_job_events add column seq integer;

update public.image_job_events e
   set seq = n.seq
  from (select id, row_number() over (partition by batch_id order by id) as seq
          from public.image_job_events
         where kind in ('progress', 'image', 'failed', 'complete', 'retrying', 'requeued', 'cancelled')) n
 where e.id = n.id;
update public.image_batches b
   set last_event_seq = coalesce((select max(seq) from public.image_job_events e where e.batch_id = b.id), 0);

create unique index image_job_events_stream_idx on public.image_job_events (batch_id, seq)
  where seq is not null;

-- The counter's UPDATE must not re-run the batch's validation.
drop trigger image_batches_validate on public.image_batches;
create trigger image_batches_validate
  before insert or update of prompts, quality, aspect_ratio, seed, timings on public.image_batches
  for each row execute function public.image_batches_validate();

create function public.image_job_events_sequence() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  update public.image_batches b
     set last_event_seq = b.last_event_seq + 1
   where b.id = new.batch_id
  returning b.last_event_seq into new.seq;
  return new;
end
$$;

create trigger image_job_events_sequence
  before insert on public.image_job_events
  for each row
  when (new.kind in ('progress', 'image', 'failed', 'complete', 'retrying', 'requeued', 'cancelled'))
  execute function public.image_job_events_sequence();

-- Cancelling takes the batch lock before the job's (the order every finishing
-- path uses, so the two cannot deadlock) and reports the batch's progress, so
-- cancelling its last unfinished job completes the batch.
create or replace function public.cancel_image_job(job_id uuid) returns boolean
language plpgsql security definer set search_path = '' as $$
declare
  cancelled public.image_jobs;
begin
  perform from public.image_batches b
   where b.id = (select j.batch_id from public.image_jobs j
                  where j.id = cancel_image_job.job_id and j.user_id = auth.uid())
     for update;
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

-- Requeueing locks the affected batches first, in id order (two requeues cannot
-- deadlock), then reports each batch's progress so its followers see it come back.
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
     for update;
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
