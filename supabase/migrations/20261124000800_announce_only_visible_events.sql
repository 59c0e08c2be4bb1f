-- Only the events people see (the ones with a seq: progress, image, failed,
-- complete, retrying, requeued, cancelled) are announced on image_job_events.
-- The dispatcher's bookkeeping (claimed, resumed, submitted, running, ...) was
-- announced too, so every claim and every recorded submission took NOTIFY's
-- database-wide lock at commit, and the event streams woke to find nothing new.
create or replace function public.image_job_events_notify() returns trigger
language plpgsql set search_path = '' as $$
begin
  perform pg_notify('image_job_events',
                    json_build_object('batch_id', batch_id, 'id', max(id))::text)
  from new_rows where seq is not null group by batch_id;
  return null;
end
$$;
