-- Who may do what. Every grant is explicit: Supabase is removing the automatic
-- grants on new public tables, and the ones it still adds are revoked first.
--   anon           nothing
--   authenticated  insert its own batches; read its own batches, jobs, events;
--                  cancel its own unfinished jobs through cancel_image_job()
--   service_role   everything (the dispatcher and the admin tools)

revoke all on public.image_batches, public.image_jobs, public.image_job_events
  from public, anon, authenticated;
revoke all on function
  public.image_batches_validate(), public.image_batches_create_jobs(), public.image_jobs_touch(),
  public.image_jobs_notify_queued(), public.image_job_events_notify(),
  public.cancel_image_job(uuid), public.requeue_failed_jobs(uuid, uuid[], timestamptz)
  from public, anon, authenticated;

grant all on public.image_batches, public.image_jobs, public.image_job_events to service_role;
grant usage, select on all sequences in schema public to service_role;
grant execute on function
  public.cancel_image_job(uuid), public.requeue_failed_jobs(uuid, uuid[], timestamptz)
  to service_role;

-- The frontend's one write. user_id is insertable so that supabase-js can send
-- it, but the policy below pins it to the caller.
grant select on public.image_batches, public.image_jobs, public.image_job_events to authenticated;
grant insert (id, user_id, prompts, quality, aspect_ratio, seed, project_id, timings)
  on public.image_batches to authenticated;
grant execute on function public.cancel_image_job(uuid) to authenticated;

alter table public.image_batches enable row level security;
alter table public.image_jobs enable row level security;
alter table public.image_job_events enable row level security;

-- (select auth.uid()) is evaluated once per statement, not once per row.
create policy "users insert their own batches" on public.image_batches
  for insert to authenticated
  with check (user_id = (select auth.uid()));

create policy "users read their own batches" on public.image_batches
  for select to authenticated
  using (user_id = (select auth.uid()));

create policy "users read their own jobs" on public.image_jobs
  for select to authenticated
  using (user_id = (select auth.uid()));

create policy "users read their own events" on public.image_job_events
  for select to authenticated
  using (exists (
    select from public.image_batches b
     where b.id = image_job_events.batch_id and b.user_id = (select auth.uid())
  ));
