-- Outbound webhooks: a batch may name a URL to be called with its events (`image`, `failed`,
-- `complete`; `complete` alone by default). Deliveries come from an outbox written by a trigger
-- in the very transaction that writes the event, so an event is never lost to a crash between
-- the two, and nothing is sent for an event that was rolled back. Dispatchers deliver them (see
-- dispatcher/outbound.py): at least once, one batch's in order, retried with backoff for a day.

alter table public.image_batches
  add column webhook text check (webhook ~ '^https?://[^\s]+$' and length(webhook) <= 2048),
  add column webhook_events text[] not null default '{complete}'
    check (webhook_events <@ array['image', 'failed', 'complete'] and cardinality(webhook_events) > 0);

comment on column public.image_batches.webhook is
  'called with the batch''s events (signed, Standard Webhooks); the address is checked at each delivery';

create table public.image_webhook_deliveries (
  id bigint generated always as identity primary key,
  batch_id uuid not null references public.image_batches (id) on delete cascade,
  event_id bigint not null,
  url text not null,
  type text not null check (type in ('image', 'failed', 'complete')),
  body jsonb not null,
  status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts integer not null default 0 check (attempts >= 0),
  next_attempt_at timestamptz not null default now(),
  last_attempt_at timestamptz,
  last_status integer,
  last_error text,
  lease_owner text,
  lease_expires_at timestamptz,
  created_at timestamptz not null default now(),
  delivered_at timestamptz
);

comment on table public.image_webhook_deliveries is
  'The outbound webhooks'' outbox: one row per (batch, event) to deliver, and how it went.';

-- The deliverer's scan: each batch's oldest undelivered row.
create index image_webhook_deliveries_pending
  on public.image_webhook_deliveries (batch_id, id) where status = 'pending';

-- The app's bookkeeping: no API role reads or writes it (RLS on, no policy); batch-status
-- reports it to the batch's owner through the app.
alter table public.image_webhook_deliveries enable row level security;
revoke all on public.image_webhook_deliveries from public, anon, authenticated, service_role;
grant all on public.image_webhook_deliveries to service_role;
revoke all on sequence public.image_webhook_deliveries_id_seq from public, anon, authenticated, service_role;
grant usage, select on sequence public.image_webhook_deliveries_id_seq to service_role;

create function public.image_job_events_to_outbox() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  batch public.image_batches;
begin
  select * into batch from public.image_batches b where b.id = new.batch_id;
  if batch.webhook is null or not (new.kind = any (batch.webhook_events)) then
    return null;
  end if;
  insert into public.image_webhook_deliveries (batch_id, event_id, url, type, body)
  values (new.batch_id, new.id, batch.webhook, new.kind,
          jsonb_build_object('type', new.kind, 'batch_id', new.batch_id, 'seq', new.seq,
                             'created_at', new.created_at) || new.payload);
  perform pg_notify('image_webhooks_due', new.batch_id::text);
  return null;
end
$$;

revoke all on function public.image_job_events_to_outbox() from public, anon, authenticated, service_role;

create trigger image_job_events_to_outbox
  after insert on public.image_job_events
  for each row when (new.kind in ('image', 'failed', 'complete'))
  execute function public.image_job_events_to_outbox();

grant insert (webhook, webhook_events) on public.image_batches to authenticated;
