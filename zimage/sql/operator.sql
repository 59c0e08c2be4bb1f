-- The operator commands' SQL (zimage status, zimage retry).

-- name: jobs_by_state
select status, count(*) as n from public.image_jobs group by status order by status;

-- name: queued_age
select extract(epoch from now() - min(created_at)) as age_s,
       count(*) filter (where run_after <= now()) as due
  from public.image_jobs
 where status = 'queued';

-- name: in_flight_by_dispatcher
select lease_owner, count(*) as n
  from public.image_jobs
 where status in ('submitted', 'running')
 group by lease_owner
 order by lease_owner;

-- name: requeue_failed
select public.requeue_failed_jobs(%(batch_id)s, %(job_ids)s, %(since)s);

-- name: cancel
-- Whoever's the jobs are (for_user null): the operator's tool.
select public.cancel_image_jobs(%(batch_id)s, %(job_ids)s, null);
