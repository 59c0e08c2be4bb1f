-- The dispatcher's queries, by name. Transitions that finish a job live in SQL
-- functions (supabase/migrations/*_dispatcher_state_machine.sql).

-- name: claim
-- Due queued jobs and in-flight jobs whose lease expired (their dispatcher died),
-- fairly across users, round-robin, up to the per-user cap counting what that user
-- already has in flight. Each user's work in order: first what was already tried (a
-- retry, a resume: begun work, and the tail of its batch), then the oldest batch, in
-- prompt order (a batch's rows share one created_at).
with due as (
    select id, user_id, created_at, status, attempts, batch_id, position
      from public.image_jobs
     where status = 'queued' and run_after <= now()
     order by created_at, batch_id, position
     limit %(scan)s
       for update skip locked
), orphaned as (
    select id, user_id, created_at, status, attempts, batch_id, position
      from public.image_jobs
     where status in ('submitted', 'running') and lease_expires_at < now()
     order by lease_expires_at
     limit %(scan)s
       for update skip locked
), candidates as (
    select * from due union all select * from orphaned
), busy as (
    -- Batches made with the anon or service-role key (user_id null) share one identity,
    -- and so one cap: NULL never equals NULL, so they are compared by coalesce.
    select coalesce(user_id, %(nobody)s::uuid) as user_key, count(*) as n
      from public.image_jobs
     where status in ('submitted', 'running') and lease_expires_at >= now()
       and coalesce(user_id, %(nobody)s::uuid) in (select coalesce(user_id, %(nobody)s::uuid) from candidates)
     group by 1
), chosen as (
    select c.id, c.status as previous_status
      from (select candidates.*,
                   row_number() over (
                     partition by coalesce(user_id, %(nobody)s::uuid)
                     order by attempts > 0 desc, created_at, batch_id, position
                   ) as rank
              from candidates) c
      left join busy b on b.user_key = coalesce(c.user_id, %(nobody)s::uuid)
     where c.rank + coalesce(b.n, 0) <= %(per_user)s
     order by c.rank + coalesce(b.n, 0), c.attempts > 0 desc, c.created_at, c.batch_id, c.position
     limit %(limit)s
), claimed as (
    update public.image_jobs j
       set lease_owner = %(owner)s,
           lease_expires_at = now() + make_interval(secs => %(lease_s)s),
           status = case when chosen.previous_status = 'queued' then 'submitted' else j.status end,
           attempts = j.attempts + (chosen.previous_status = 'queued')::int,
           submissions = j.submissions + (chosen.previous_status = 'queued')::int,
           runpod_job_id = case when chosen.previous_status = 'queued' then null else j.runpod_job_id end,
           runpod_endpoint_id = case when chosen.previous_status = 'queued' then null
                                     else j.runpod_endpoint_id end
      from chosen
     where j.id = chosen.id
    returning j.*, chosen.previous_status
), events as (
    insert into public.image_job_events (batch_id, job_id, kind, payload)
    select batch_id, id, case when previous_status = 'queued' then 'claimed' else 'resumed' end,
           jsonb_build_object('attempt', attempts, 'runpod_job_id', runpod_job_id)
      from claimed
)
select c.id, c.batch_id, c.user_id, c.position, c.prompt, c.quality, c.aspect_ratio, c.seed,
       c.attempts, c.max_attempts, c.width, c.height, c.steps, c.runpod_job_id, c.runpod_endpoint_id,
       c.created_at, c.previous_status, c.storage_path, c.submissions, c.format, c.output_quality,
       c.character_weight, c.adapter_path, c.adapter_sha256
  from claimed c;

-- name: mark_submitted
-- Many jobs at once (the store coalesces calls made at the same moment). Like
-- every statement here that touches several of our rows, it locks them in id
-- order first, so two of them can never wait for each other.
with submitted as (
    select * from unnest(%(ids)s::uuid[], %(runpod_job_ids)s::text[], %(endpoint_ids)s::text[])
        as s(id, runpod_job_id, endpoint_id)
), locked as (
    select j.id from public.image_jobs j
     where j.id in (select id from submitted) and j.lease_owner = %(owner)s and j.status = 'submitted'
     order by j.id
       for no key update
), updated as (
    update public.image_jobs j
       set runpod_job_id = s.runpod_job_id, runpod_endpoint_id = s.endpoint_id, submitted_at = now()
      from submitted s
     where j.id = s.id and j.id in (select id from locked)
    returning j.id, j.batch_id, j.attempts, s.runpod_job_id, s.endpoint_id
)
insert into public.image_job_events (batch_id, job_id, kind, payload)
select batch_id, id, 'submitted',
       jsonb_build_object('attempt', attempts, 'runpod_job_id', runpod_job_id, 'endpoint_id', endpoint_id)
  from updated
returning job_id;

-- name: succeed
-- Many jobs at once, each through dispatcher_succeed_job (which locks its batch, then
-- the job), taken in batch id order: the order every path that locks several batches
-- uses, so they cannot deadlock. OFFSET 0 keeps the ordered subquery from being
-- flattened, so the calls happen in that order.
select s.id,
       public.dispatcher_succeed_job(s.id, %(owner)s, s.image_url, s.image_sha256, s.width, s.height,
                                     s.steps, s.seed, s.timings, s.status_polls, s.reused_from)
  from (select u.*
          from unnest(%(ids)s::uuid[], %(image_urls)s::text[], %(hashes)s::text[], %(widths)s::int[],
                      %(heights)s::int[], %(steps)s::int[], %(seeds)s::bigint[], %(timings)s::jsonb[],
                      %(polls)s::int[], %(reused_from)s::uuid[])
               as u(id, image_url, image_sha256, width, height, steps, seed, timings, status_polls,
                    reused_from)
          join public.image_jobs j on j.id = u.id
         order by j.batch_id, u.id
        offset 0) s;

-- name: mark_running
-- started_at is when the worker took the job: RunPod's delayTime after the submission when it
-- is known (a webhook or a poll that found the job finished reports it late), else now.
with updated as (
    update public.image_jobs
       set status = 'running',
           started_at = least(now(), coalesce(submitted_at + make_interval(secs => %(queue_s)s::float8), now()))
     where id = %(id)s and lease_owner = %(owner)s and status = 'submitted'
    returning id, batch_id
)
insert into public.image_job_events (batch_id, job_id, kind, payload)
select batch_id, id, 'running', '{}'::jsonb from updated
returning job_id;

-- name: resubmit
-- A new attempt for a job whose submission or result was lost; counted and explained.
with updated as (
    update public.image_jobs
       set attempts = attempts + 1, resubmissions = resubmissions + 1, submissions = submissions + 1,
           status = 'submitted',
           runpod_job_id = null, runpod_endpoint_id = null
     where id = %(id)s and lease_owner = %(owner)s and status in ('submitted', 'running')
    returning id, batch_id, attempts, submissions
)
insert into public.image_job_events (batch_id, job_id, kind, payload)
select batch_id, id, 'resubmitted', jsonb_build_object('attempt', attempts, 'reason', %(reason)s::text)
  from updated
returning (select attempts from updated), (select submissions from updated);

-- name: defer
-- Back to the queue without counting the attempt: the job was never submitted (every
-- endpoint refuses our key). submissions is not given back: numbers never repeat.
with updated as (
    update public.image_jobs
       set status = 'queued', attempts = greatest(attempts - 1, 0),
           run_after = now() + make_interval(secs => %(delay_s)s),
           lease_owner = null, lease_expires_at = null
     where id = %(id)s and lease_owner = %(owner)s and status = 'submitted' and runpod_job_id is null
    returning id, batch_id
)
insert into public.image_job_events (batch_id, job_id, kind, payload)
select batch_id, id, 'deferred', jsonb_build_object('reason', %(reason)s::text) from updated
returning job_id;

-- name: renew_leases
with locked as (
    select id from public.image_jobs
     where lease_owner = %(owner)s and id = any(%(ids)s) and status in ('submitted', 'running')
     order by id
       for no key update
)
update public.image_jobs
   set lease_expires_at = now() + make_interval(secs => %(lease_s)s)
 where id in (select id from locked)
returning id;

-- name: release_leases
-- Graceful shutdown: hand in-flight jobs back at once, RunPod job ids kept, so
-- another dispatcher resumes polling them instead of paying for a second run.
with locked as (
    select id from public.image_jobs
     where lease_owner = %(owner)s and id = any(%(ids)s) and status in ('submitted', 'running')
     order by id
       for no key update
)
update public.image_jobs
   set lease_expires_at = now() - interval '1 second'
 where id in (select id from locked)
returning id;

-- name: find_reusable
-- Only jobs whose stored bytes have a recorded hash: the copy is checked against it,
-- since a project's key can be written again by its owner's later batches.
select id, storage_path, image_sha256, width, height, steps
  from public.image_jobs
 where md5(prompt) = md5(%(prompt)s) and prompt = %(prompt)s and quality = %(quality)s
   and aspect_ratio = %(aspect_ratio)s and seed = %(seed)s and status = 'succeeded'
   and format = %(format)s and output_quality is not distinct from %(output_quality)s
   and adapter_sha256 is not distinct from %(adapter_sha256)s
   and character_weight is not distinct from %(character_weight)s::real
   and image_sha256 is not null
 order by finished_at desc
 limit 1;

-- name: fail
-- The state machine decides: back to the queue after a backoff (retryable, attempts left)
-- or failed for good; null if the row is no longer ours.
select public.dispatcher_fail_job(
  %(id)s, %(owner)s, %(error)s, %(retryable)s, %(polls)s, %(backoff_base_s)s, %(backoff_max_s)s
);

-- name: announce_completion
-- A webhook for a job another replica runs: wake it (it confirms with a status call of its own).
select pg_notify('image_job_completed', %(id)s::text);

-- name: claim_webhook_deliveries
-- Each batch's oldest undelivered event only, and only when it is due and no one holds it:
-- one batch's events go out in order, whichever dispatchers share the outbox.
with heads as (
    select distinct on (batch_id) id
      from public.image_webhook_deliveries
     where status = 'pending'
     order by batch_id, id
), due as (
    select d.id
      from public.image_webhook_deliveries d
     where d.id in (select id from heads)
       and d.next_attempt_at <= now()
       and (d.lease_expires_at is null or d.lease_expires_at < now())
     order by d.next_attempt_at
     limit %(limit)s
       for update skip locked
)
update public.image_webhook_deliveries d
   set lease_owner = %(owner)s, lease_expires_at = now() + make_interval(secs => %(lease_s)s),
       attempts = d.attempts + 1, last_attempt_at = now()
  from due
 where d.id = due.id
returning d.id, d.batch_id, d.event_id, d.url, d.type, d.body, d.attempts;

-- name: webhook_delivered
update public.image_webhook_deliveries
   set status = 'delivered', delivered_at = now(), last_status = %(status)s, last_error = null,
       lease_owner = null, lease_expires_at = null
 where id = %(id)s and lease_owner = %(owner)s;

-- name: webhook_attempt_failed
-- Retried after the given delay until the delivery is give_up_s old: then failed for good,
-- and the batch's next event becomes its head.
update public.image_webhook_deliveries
   set status = case when now() - created_at >= make_interval(secs => %(give_up_s)s)
                     then 'failed' else 'pending' end,
       next_attempt_at = now() + make_interval(secs => %(retry_in_s)s),
       last_status = %(status)s, last_error = %(error)s, lease_owner = null, lease_expires_at = null
 where id = %(id)s and lease_owner = %(owner)s
returning status;

-- name: publish_capacity
-- Ours, and what the other live replicas hold (the jobs they keep at RunPod: admission shares
-- the endpoints' capacity with them). A row not refreshed for 30 s is a dispatcher gone.
with published as (
  insert into public.image_dispatchers (dispatcher_id, workers, in_flight, updated_at)
  values (%(owner)s, %(workers)s, %(in_flight)s, now())
  on conflict (dispatcher_id) do update
     set workers = excluded.workers, in_flight = excluded.in_flight, updated_at = excluded.updated_at
)
select coalesce(sum(in_flight), 0)::integer from public.image_dispatchers
 where dispatcher_id <> %(owner)s and updated_at > now() - interval '30 seconds';

-- name: forget_capacity
delete from public.image_dispatchers where dispatcher_id = %(owner)s;

-- name: record_progress
update public.image_jobs set progress = %(progress)s
 where id = %(id)s and lease_owner = %(owner)s and status = 'running';
