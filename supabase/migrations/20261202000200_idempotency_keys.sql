-- Idempotency-Key on generate-images: a client that retries after a lost answer gets the batch
-- it already paid for, whichever replica answers. One row per (caller, key): the body's hash
-- and the batch it made. Written in the same transaction as the batch, so two concurrent
-- requests with one key make one batch (the second waits on the first's unique key).
create table public.image_idempotency_keys (
  caller text not null check (length(caller) between 1 and 200),
  key text not null check (length(key) between 1 and 255),
  body_sha256 text not null check (body_sha256 ~ '^[0-9a-f]{64}$'),
  batch_id uuid references public.image_batches (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (caller, key)
);

comment on table public.image_idempotency_keys is
  'generate-images'' Idempotency-Key: per caller, the body''s hash and its batch; kept 24 hours.';

create index image_idempotency_keys_created_at on public.image_idempotency_keys (created_at);

-- The app's own bookkeeping: no API role reads or writes it (RLS on, no policy).
alter table public.image_idempotency_keys enable row level security;
revoke all on public.image_idempotency_keys from public, anon, authenticated, service_role;
grant all on public.image_idempotency_keys to service_role;
