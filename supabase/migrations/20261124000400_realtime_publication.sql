-- Realtime (postgres_changes) relays inserts and updates of these tables, so
-- the frontend can watch its own rows (RLS applies) and the dispatcher can be
-- woken where LISTEN is not available.
alter publication supabase_realtime
  add table public.image_batches, public.image_jobs, public.image_job_events;
