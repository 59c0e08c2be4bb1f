-- Every privilege the API roles hold on the pipeline's objects, stated once.
--
-- A Supabase project's default privileges grant ALL on every new table, sequence
-- and function in public to anon, authenticated and service_role (and functions
-- are executable by PUBLIC unless revoked). The earlier migrations revoked that on
-- the tables and on the functions they named, and missed the rest: anon and
-- authenticated could setval() image_job_events_id_seq (making event ids collide
-- or jump), anyone could call image_job_events_sequence() (a security-definer
-- trigger function), and service_role could execute every trigger function.
-- Trigger functions need no EXECUTE privilege to fire, so no role gets one.
-- supabase/tests/privileges.test.sql lists what remains, so a new object without
-- explicit grants fails the tests. Users also lose sight of image_jobs' bookkeeping
-- columns (below).

revoke all on sequence public.image_job_events_id_seq from public, anon, authenticated, service_role;
grant usage, select on sequence public.image_job_events_id_seq to service_role;

revoke all on function
  public.image_batches_validate(), public.image_batches_create_jobs(), public.image_jobs_touch(),
  public.image_jobs_notify_queued(), public.image_job_events_notify(), public.image_job_events_sequence(),
  public.image_job_storage_path(uuid, text, jsonb),
  public.cancel_image_job(uuid), public.requeue_failed_jobs(uuid, uuid[], timestamptz),
  public.image_batch_progress(uuid),
  public.dispatcher_succeed_job(uuid, text, text, text, integer, integer, integer, bigint, jsonb, integer, uuid),
  public.dispatcher_fail_job(uuid, text, text, boolean, integer, double precision, double precision),
  public.strip_blank(text), public.image_timing_problem(jsonb)
  from public, anon, authenticated, service_role;

-- The one function a user calls (RPC), and the validation trigger's pure helpers,
-- which run as the inserting user.
grant execute on function public.cancel_image_job(uuid) to authenticated, service_role;
grant execute on function public.strip_blank(text), public.image_timing_problem(jsonb)
  to authenticated, service_role;
-- The dispatcher's and the admin tools' state machine.
grant execute on function
  public.requeue_failed_jobs(uuid, uuid[], timestamptz),
  public.image_batch_progress(uuid),
  public.dispatcher_succeed_job(uuid, text, text, text, integer, integer, integer, bigint, jsonb, integer, uuid),
  public.dispatcher_fail_job(uuid, text, text, boolean, integer, double precision, double precision)
  to service_role;

-- Tables: restated whole, so that what the default privileges added cannot linger.
revoke all on public.image_batches, public.image_jobs, public.image_job_events, public.image_projects
  from public, anon, authenticated, service_role;
grant all on public.image_batches, public.image_jobs, public.image_job_events, public.image_projects
  to service_role;
grant select on public.image_batches, public.image_job_events, public.image_projects to authenticated;
-- A user reads their jobs' progress and results, not the dispatcher's bookkeeping (leases,
-- RunPod ids, poll and submission counts, backoff times, the stored bytes' hash): column
-- grants, which Realtime honours too. Select the columns by name (select=* is refused).
grant select (id, batch_id, user_id, position, prompt, quality, aspect_ratio, seed, status, attempts,
              max_attempts, error, image_url, storage_path, width, height, steps, created_at, updated_at,
              started_at, finished_at, reused_from)
  on public.image_jobs to authenticated;
grant insert (id, user_id, prompts, quality, aspect_ratio, seed, project_id, timings)
  on public.image_batches to authenticated;
