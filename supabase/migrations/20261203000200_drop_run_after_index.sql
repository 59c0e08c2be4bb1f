-- Since the claim walks each user's queued jobs in batch order (image_jobs_queued_order_idx),
-- nothing reads queued jobs by run_after alone: the old index only cost every insert and
-- status change of a queued row a write. A retry's run_after is checked on the rows the
-- order index yields (few are ever waiting out a backoff).
drop index public.image_jobs_queued_idx;
