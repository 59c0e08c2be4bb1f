-- The dispatcher claims each user's queued jobs oldest batch first, in prompt order
-- (dispatcher/sql/queries.sql, claim): the index it walks for that.
create index image_jobs_queued_order_idx on public.image_jobs (created_at, batch_id, position)
  where status = 'queued';
