-- Supabase environment shim: what a vanilla PostgreSQL lacks to run our migrations
-- the way a Supabase project runs them. Apply it BEFORE the migrations on a local
-- cluster only, as the cluster's superuser (supabase_admin, as on Supabase); never on
-- Supabase itself, which already has all of this. Then run the migrations as
-- postgres, which on Supabase is not a superuser (zimage migrate --shim does both).
--
-- Idempotent: roles are cluster-wide and survive between databases.

-- Roles, as Supabase defines them. The API's request roles cannot log in; PostgREST
-- logs in as authenticator and switches to one of them per request. All of them
-- inherit (as on Supabase), and carry Supabase's timeouts.
do $$
declare
  name text;
begin
  foreach name in array array['anon', 'authenticated', 'service_role', 'authenticator', 'postgres'] loop
    if not exists (select from pg_roles where rolname = name) then
      execute format('create role %I', name);
    end if;
  end loop;
end
$$;
alter role anon nologin inherit;
alter role authenticated nologin inherit;
alter role service_role nologin inherit bypassrls;
alter role authenticator login noinherit;
-- postgres is the project owner's role, not a superuser.
alter role postgres login nosuperuser createrole createdb replication bypassrls inherit;
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
alter role authenticator set lock_timeout = '8s';

-- What the project owner may do in this database, as on Supabase: create schemas
-- (supabase_migrations), and create in public.
do $$
begin
  execute format('grant create, connect, temporary on database %I to postgres', current_database());
end
$$;
grant usage, create on schema public to postgres;
grant usage on schema public to anon, authenticated, service_role;

-- Supabase's default privileges: everything postgres creates in public is granted
-- to every API role. Migrations must revoke what they do not mean to give;
-- supabase/tests/privileges.test.sql checks that they did.
alter default privileges for role postgres in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to anon, authenticated, service_role;

-- Where Supabase installs extensions (pgtap, pgcrypto, ...). pgTAP is an extension
-- the dashboard installs; here the superuser does, when the machine has it.
create schema if not exists extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
do $$
begin
  if exists (select from pg_available_extensions where name = 'pgtap') then
    create extension if not exists pgtap with schema extensions;
  end if;
end
$$;

-- auth: the users table and the claim helpers, defined as Supabase defines them
-- (PostgREST puts the verified JWT claims in request.jwt.claims; older versions
-- used one setting per claim, request.jwt.claim.<name>).
create schema if not exists auth;
grant usage on schema auth to postgres, anon, authenticated, service_role;

-- The columns of GoTrue's auth.users that anything here touches or that constrain an
-- insert, as GoTrue's migrations define them: most columns have no default, the two
-- flags are NOT NULL, email is unique only among non-SSO users, and RLS is on (the
-- API roles have no grant on it at all; the project owner has all).
create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  is_super_admin boolean,
  created_at timestamptz,
  updated_at timestamptz,
  phone text unique default null,
  phone_confirmed_at timestamptz,
  banned_until timestamptz,
  deleted_at timestamptz,
  is_sso_user boolean not null default false,
  is_anonymous boolean not null default false
);
create unique index if not exists users_email_partial_key on auth.users (email) where is_sso_user = false;
alter table auth.users enable row level security;
grant all on auth.users to postgres;

create or replace function auth.uid() returns uuid
language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;

-- storage: enough of Supabase Storage's schema for bucket rows and policies.
create schema if not exists storage;
grant usage on schema storage to postgres, anon, authenticated, service_role;

-- As Storage's own migrations leave them: RLS on both tables (anon and authenticated
-- see no bucket and no object without a policy), ALL granted to the API roles with RLS
-- as the guard, and deleting rows directly refused (only the Storage API may).
do $$
begin
  if not exists (select from pg_type where typname = 'buckettype' and typnamespace = 'storage'::regnamespace) then
    create type storage.buckettype as enum ('STANDARD', 'ANALYTICS');
  end if;
end
$$;

create table if not exists storage.buckets (
  id text primary key,
  name text not null,
  owner uuid,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  public boolean default false,
  avif_autodetection boolean default false,
  file_size_limit bigint,
  allowed_mime_types text[],
  owner_id text,
  type storage.buckettype not null default 'STANDARD'
);
create unique index if not exists bname on storage.buckets (name);

create table if not exists storage.objects (
  id uuid primary key default gen_random_uuid(),
  bucket_id text references storage.buckets (id),
  name text,
  owner uuid,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  last_accessed_at timestamptz default now(),
  metadata jsonb,
  path_tokens text[] generated always as (string_to_array(name, '/')) stored,
  version text,
  owner_id text,
  user_metadata jsonb
);
create unique index if not exists bucketid_objname on storage.objects (bucket_id, name);
alter table storage.buckets enable row level security;
alter table storage.objects enable row level security;
grant all on storage.buckets, storage.objects to anon, authenticated, service_role, postgres;

create or replace function storage.protect_delete() returns trigger
language plpgsql as $$
begin
  if coalesce(current_setting('storage.allow_delete_query', true), 'false') <> 'true' then
    raise exception using errcode = '42501',
      message = 'Direct deletion from storage tables is not allowed. Use the Storage API instead.';
  end if;
  return null;
end
$$;
create or replace trigger protect_buckets_delete before delete on storage.buckets
  for each statement execute function storage.protect_delete();
create or replace trigger protect_objects_delete before delete on storage.objects
  for each statement execute function storage.protect_delete();

create or replace function storage.foldername(name text) returns text[]
language sql immutable as $$
  select (string_to_array(name, '/'))[1:array_length(string_to_array(name, '/'), 1) - 1]
$$;

-- Realtime relays changes of the tables in this publication.
do $$
begin
  if not exists (select from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;
alter publication supabase_realtime owner to postgres;

-- Supabase's search path, so unqualified extension functions (pgTAP's) resolve.
alter role postgres set search_path = "$user", public, extensions;
