-- The page's admin view lists failed jobs across users, newest first, a page at a time.
create index image_jobs_failed_idx on public.image_jobs (finished_at desc, id) where status = 'failed';
