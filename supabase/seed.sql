-- Local demo data (applied by `supabase db reset` and by the local stack).
-- One user for the demo and the development token the local stack prints.
insert into auth.users (id, aud, role, email)
values ('00000000-0000-4000-8000-000000000001', 'authenticated', 'authenticated', 'demo@historygen.local')
on conflict (id) do nothing;
