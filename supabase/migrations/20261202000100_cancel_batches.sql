-- Cancelling many jobs at once (POST /functions/v1/cancel, zimage cancel): a whole batch, or
-- a list of jobs, for their owner or for an admin. Queued jobs are cancelled at once; a job in
-- flight becomes 'cancelled' too, which its dispatcher notices at its next lease renewal (the
-- row is no longer its own) and cancels the RunPod job. Each gets a 'cancelled' event, and its
-- batch's progress (and 'complete', once nothing is left) follows.
create function public.cancel_image_jobs(batch_id uuid, job_ids uuid[], for_user uuid)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  cancelled integer;
  batches uuid[];
begin
  if batch_id is null and job_ids is null then
    raise exception 'give a batch id or job ids' using errcode = '22023';
  end if;
  -- Batches first, in id order, then their jobs: the order every path that locks several
  -- batches takes (the dispatcher's succeed, requeue_failed_jobs), so they cannot deadlock.
  perform from public.image_batches b
   where b.id in (select j.batch_id from public.image_jobs j
                   where (cancel_image_jobs.batch_id is null or j.batch_id = cancel_image_jobs.batch_id)
                     and (cancel_image_jobs.job_ids is null or j.id = any(cancel_image_jobs.job_ids))
                     and (for_user is null or j.user_id = for_user))
   order by b.id
     for no key update;
  with done as (
    update public.image_jobs j
       set status = 'cancelled', finished_at = now(), lease_owner = null, lease_expires_at = null
     where (cancel_image_jobs.batch_id is null or j.batch_id = cancel_image_jobs.batch_id)
       and (cancel_image_jobs.job_ids is null or j.id = any(cancel_image_jobs.job_ids))
       and (for_user is null or j.user_id = for_user)
       and j.status in ('queued', 'submitted', 'running')
    returning j.batch_id, j.id, j.position
  ), events as (
    insert into public.image_job_events (batch_id, job_id, kind, payload)
    select d.batch_id, d.id, 'cancelled', jsonb_build_object('job_id', d.id, 'position', d.position)
      from done d
    returning image_job_events.batch_id
  )
  select count(*), array_agg(distinct e.batch_id) into cancelled, batches from events e;
  perform public.image_batch_progress(b) from unnest(coalesce(batches, '{}')) as b order by b;
  return cancelled;
end
$$;

comment on function public.cancel_image_jobs(uuid, uuid[], uuid) is
  'Cancel the unfinished jobs of a batch and/or a list (only for_user''s, unless null); returns how many.';

-- The server's (admin tools, the cancel function as the caller's owner check): not the API roles'.
revoke all on function public.cancel_image_jobs(uuid, uuid[], uuid) from public, anon, authenticated, service_role;
grant execute on function public.cancel_image_jobs(uuid, uuid[], uuid) to service_role;
