-- One rate limit across app replicas: generate-images' and cancel's token buckets live here,
-- where every replica sees them, taken in one round trip (take_rate_limit_token). Unlogged: a
-- bucket is worth nothing after a crash (an empty table forgives everyone once), and skipping
-- the WAL keeps a call's write cheap.
create unlogged table public.image_rate_limits (
  key text primary key check (length(key) between 1 and 300),
  tokens double precision not null,
  updated_at timestamptz not null default clock_timestamp()
);

comment on table public.image_rate_limits is
  'Token buckets of the HTTP functions'' rate limit, per caller (user id, or anon:address).';

alter table public.image_rate_limits enable row level security;
revoke all on public.image_rate_limits from public, anon, authenticated, service_role;
grant all on public.image_rate_limits to service_role;

-- Take one token from the caller's bucket (burst tokens, refilled at per_s a second): 0 when
-- the call may go ahead, else the seconds until a token is there. A refused call takes nothing.
-- Now and then (one call in a thousand) buckets that have refilled, and so mean nothing, go.
create function public.take_rate_limit_token(bucket text, burst integer, per_s double precision)
returns double precision language plpgsql set search_path = '' as $$
declare
  available double precision;
  now_ts timestamptz := clock_timestamp();
begin
  insert into public.image_rate_limits (key, tokens, updated_at) values (bucket, burst, now_ts)
  on conflict (key) do nothing;
  select least(burst, r.tokens + extract(epoch from now_ts - r.updated_at) * per_s)
    into available
    from public.image_rate_limits r where r.key = bucket
     for update;
  update public.image_rate_limits
     set tokens = case when available >= 1 then available - 1 else available end, updated_at = now_ts
   where key = bucket;
  if random() < 0.001 then
    delete from public.image_rate_limits
     where updated_at < now_ts - make_interval(secs => burst / per_s);
  end if;
  return case when available >= 1 then 0 else (1 - available) / per_s end;
end
$$;

revoke all on function public.take_rate_limit_token(text, integer, double precision)
  from public, anon, authenticated, service_role;
grant execute on function public.take_rate_limit_token(text, integer, double precision) to service_role;
