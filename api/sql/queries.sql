-- The HTTP functions' SQL, one named query per use (loaded by api/queries.py).

-- name: insert_batch
-- As the caller (act_as_user first, for users): RLS and the insert trigger check the values
-- and make the jobs; a refusal is mapped to a 4xx in api/batches.py.
insert into public.image_batches
  (user_id, prompts, quality, aspect_ratio, project_id, seed, timings, format, output_quality,
   webhook, webhook_events, character_id, character_weight, prompt_characters)
values (%(user_id)s, %(prompts)s, %(quality)s, %(aspect_ratio)s, %(project_id)s, %(seed)s, %(timings)s,
        %(format)s, %(output_quality)s, %(webhook)s, coalesce(%(webhook_events)s::text[], '{complete}'),
        %(character_id)s, %(character_weight)s, %(prompt_characters)s)
returning id;

-- name: batch
select id, user_id, created_at, quality, aspect_ratio, project_id, format, output_quality,
       webhook, webhook_events, character_id, character_weight
  from public.image_batches
 where id = %(batch_id)s;

-- name: batch_webhook_deliveries
-- How the batch's webhook deliveries went (the app's connection: the table is the app's own).
select type, status, attempts, last_attempt_at, last_status, last_error, next_attempt_at
  from public.image_webhook_deliveries
 where batch_id = %(batch_id)s
 order by id;

-- name: batch_jobs
-- Queue position: among due queued jobs in the order the claim scans them (oldest
-- due first); a job waiting out a retry backoff counts from when it is due.
with queue as (
    select id, row_number() over (order by run_after, created_at, batch_id, position) as queue_position
      from public.image_jobs where status = 'queued'
)
select j.id, j.position, j.prompt, j.status, j.image_url, j.error, j.attempts, j.max_attempts,
       j.finished_at, q.queue_position, j.started_at, j.quality, j.width, j.height, j.progress,
       j.character_id
  from public.image_jobs j left join queue q on q.id = j.id
 where j.batch_id = %(batch_id)s
 order by j.position;

-- name: batch_owners
-- The event broker: which of these batches exist, and whose they are (who may follow them).
select id, user_id from public.image_batches where id = any(%(batch_ids)s);

-- name: active_batches
-- A feed of "every batch I may see" starts with the ones still in progress.
select distinct batch_id
  from public.image_jobs
 where status = any(%(states)s) and (%(is_admin)s or user_id = %(user_id)s);

-- name: events_after
-- Every followed batch's events after the last one each holds: one query for all of them.
select e.batch_id, e.seq, e.kind, e.payload
  from unnest(%(batch_ids)s::uuid[], %(after_seqs)s::int[]) as c(batch_id, after_seq)
  join public.image_job_events e on e.batch_id = c.batch_id and e.seq > c.after_seq
 order by e.batch_id, e.seq;

-- name: job_owners
-- The cancel function's owner check: whose each job is.
select id, user_id from public.image_jobs where id = any(%(job_ids)s);

-- name: cancel_jobs
select public.cancel_image_jobs(%(batch_id)s, %(job_ids)s, %(for_user)s);

-- name: claim_idempotency_key
-- First use of a key (or the first since it expired): this request makes the batch. Otherwise
-- nothing is returned, after waiting for a concurrent first use to commit. On the way, up to
-- 100 other keys that have expired are swept (the index on created_at makes that a short
-- range scan, usually empty); this one is left to its upsert.
with swept as (
    delete from public.image_idempotency_keys
     where ctid = any(array(select ctid from public.image_idempotency_keys
                             where created_at < now() - interval '24 hours'
                               and (caller, key) <> (%(caller)s, %(key)s)
                             limit 100
                               for update skip locked))
)
insert into public.image_idempotency_keys as k (caller, key, body_sha256)
values (%(caller)s, %(key)s, %(body_sha256)s)
on conflict (caller, key) do update
   set body_sha256 = excluded.body_sha256, batch_id = null, created_at = now()
 where k.created_at < now() - interval '24 hours'
returning k.key;

-- name: idempotency_key
select body_sha256, batch_id from public.image_idempotency_keys where caller = %(caller)s and key = %(key)s;

-- name: record_idempotency_key
update public.image_idempotency_keys set batch_id = %(batch_id)s where caller = %(caller)s and key = %(key)s;

-- name: take_rate_limit_token
-- 0 when the call may go ahead, else the seconds until the caller's bucket has a token.
select public.take_rate_limit_token(%(key)s, %(burst)s, %(per_s)s);

-- name: live_capacity
-- The workers and jobs in flight of the dispatchers that reported in the last 30 s.
select coalesce(sum(workers), 0)::int as workers, coalesce(sum(in_flight), 0)::int as in_flight
  from public.image_dispatchers
 where updated_at > now() - interval '30 seconds';

-- name: execution_times
-- For each of these sizes, the median execution of the last 50 jobs of that size to succeed
-- (what the dispatchers recorded from RunPod's executionTime).
select s.quality, s.width, s.height,
       (select percentile_cont(0.5) within group (order by (r.timings ->> 'execution_ms')::float8)
          from (select j.timings
                  from public.image_jobs j
                 where j.status = 'succeeded' and j.quality = s.quality and j.width = s.width
                   and j.height = s.height and jsonb_typeof(j.timings -> 'execution_ms') = 'number'
                 order by j.finished_at desc
                 limit 50) r) / 1000 as execution_s
  from unnest(%(qualities)s::text[], %(widths)s::int[], %(heights)s::int[]) as s (quality, width, height);

-- name: unfinished_jobs
-- The event stream's estimates: the unfinished jobs of these batches, with their place in the
-- queue (as in batch_jobs).
with queue as (
    select id, row_number() over (order by run_after, created_at, batch_id, position) as queue_position
      from public.image_jobs where status = 'queued'
)
select j.batch_id, j.id, j.position, j.status, q.queue_position, j.started_at, j.quality, j.width,
       j.height, j.progress
  from public.image_jobs j left join queue q on q.id = j.id
 where j.batch_id = any(%(batch_ids)s) and j.status in ('queued', 'submitted', 'running')
 order by j.batch_id, j.position;

-- name: list_batches
-- A caller's batches (every batch, for an admin: null user), newest first, a page at a time:
-- before the given (created_at, id), which the previous page ended with.
select b.id, b.created_at, b.quality, b.aspect_ratio, b.format, b.project_id,
       cardinality(b.prompts) as total,
       coalesce((select jsonb_object_agg(c.status, c.n)
                   from (select j.status, count(*) as n from public.image_jobs j
                          where j.batch_id = b.id group by j.status) c), '{}') as counts
  from public.image_batches b
 where (%(user_id)s::uuid is null or b.user_id = %(user_id)s)
   and (%(before_at)s::timestamptz is null or (b.created_at, b.id) < (%(before_at)s, %(before_id)s::uuid))
 order by b.created_at desc, b.id desc
 limit %(limit)s;

-- name: list_failed_jobs
-- Failed jobs across users, newest first, a page at a time (the admins' view).
select j.id, j.batch_id, j.user_id, j.position, j.prompt, j.error, j.attempts, j.finished_at
  from public.image_jobs j
 where j.status = 'failed'
   and (%(before_at)s::timestamptz is null or (j.finished_at, j.id) < (%(before_at)s, %(before_id)s::uuid))
 order by j.finished_at desc, j.id desc
 limit %(limit)s;

-- name: list_characters
-- As the caller (act_as_user first, for users): row level security leaves their own and the
-- shared characters.
select id, owner_id, name, trigger_phrase, default_weight, shared
  from public.characters
 order by name, created_at
 limit 500;
