-- A running job's step progress, as its worker reports it to RunPod ({step, steps, elapsed_ms}):
-- written by the dispatcher when a status poll shows a new step, read by batch-status and the
-- event stream's estimates, and published by Realtime with the row's other changes.
alter table public.image_jobs add column progress jsonb;

comment on column public.image_jobs.progress is
  'running: the worker''s last reported {step, steps, elapsed_ms}; null otherwise';

grant select (progress) on public.image_jobs to authenticated;
