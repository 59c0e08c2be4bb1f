-- Every privilege anon, authenticated and service_role (and PUBLIC, which they all are)
-- hold on any object of the public schema, against an explicit list. A new table,
-- column grant, sequence or function without its own grants fails here: on Supabase,
-- default privileges would have given it to every API role.
begin;
create extension if not exists pgtap with schema extensions;
select plan(1);

create temporary view api_privileges as
with acl as (
  select 'table' as kind, c.relname::text as name,
         (aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))).*
    from pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
  union all
  select 'sequence', c.relname::text, (aclexplode(coalesce(c.relacl, acldefault('s', c.relowner)))).*
    from pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
  union all
  select 'column', c.relname || '.' || a.attname, (aclexplode(a.attacl)).*
    from pg_attribute a join pg_class c on c.oid = a.attrelid
   where c.relnamespace = 'public'::regnamespace and a.attnum > 0 and not a.attisdropped
  union all
  select 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
         (aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))).*
    from pg_proc p
   where p.pronamespace = 'public'::regnamespace
  union all
  -- types: only explicit grants (every type is usable by PUBLIC by default, harmlessly)
  select 'type', t.typname::text, (aclexplode(t.typacl)).*
    from pg_type t
   where t.typnamespace = 'public'::regnamespace and t.typacl is not null
)
select kind, name, case grantee when 0 then 'PUBLIC' else pg_get_userbyid(grantee)::text end as grantee,
       privilege_type::text
  from acl
 where grantee = 0 or pg_get_userbyid(grantee) in ('anon', 'authenticated', 'service_role');

select set_eq(
  'select * from api_privileges',
  $$
  select 'table' as kind, t as name, 'service_role' as grantee, p as privilege
    from unnest(array['image_batches', 'image_jobs', 'image_job_events', 'image_projects',
                      'image_idempotency_keys', 'image_webhook_deliveries', 'image_rate_limits',
                      'image_dispatchers', 'characters']) t,
         unnest(array['INSERT', 'SELECT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p
  union all
  select 'table', t, 'authenticated', 'SELECT'
    from unnest(array['image_batches', 'image_job_events', 'image_projects']) t
  union all
  select 'column', 'image_jobs.' || c, 'authenticated', 'SELECT'
    from unnest(array['id', 'batch_id', 'user_id', 'position', 'prompt', 'quality', 'aspect_ratio', 'seed',
                      'status', 'attempts', 'max_attempts', 'error', 'image_url', 'storage_path', 'width',
                      'height', 'steps', 'created_at', 'updated_at', 'started_at', 'finished_at',
                      'reused_from', 'format', 'output_quality', 'progress', 'character_id',
                      'character_weight']) c
  union all
  select 'column', 'image_batches.' || c, 'authenticated', 'INSERT'
    from unnest(array['id', 'user_id', 'prompts', 'quality', 'aspect_ratio', 'seed', 'project_id', 'timings',
                      'format', 'output_quality', 'webhook', 'webhook_events', 'character_id',
                      'character_weight', 'prompt_characters']) c
  union all
  select 'column', 'characters.' || c, 'authenticated', 'SELECT'
    from unnest(array['id', 'owner_id', 'name', 'trigger_phrase', 'adapter_sha256', 'adapter_bytes',
                      'default_weight', 'shared', 'created_at', 'updated_at']) c
  union all
  select 'column', 'characters.' || c, 'authenticated', 'UPDATE'
    from unnest(array['name', 'trigger_phrase', 'default_weight', 'shared']) c
  union all
  values ('table', 'characters', 'authenticated', 'DELETE')
  union all
  values ('sequence', 'image_job_events_id_seq', 'service_role', 'USAGE'),
         ('sequence', 'image_job_events_id_seq', 'service_role', 'SELECT'),
         ('sequence', 'image_webhook_deliveries_id_seq', 'service_role', 'USAGE'),
         ('sequence', 'image_webhook_deliveries_id_seq', 'service_role', 'SELECT'),
         ('function', 'cancel_image_job(job_id uuid)', 'authenticated', 'EXECUTE'),
         ('function', 'cancel_image_job(job_id uuid)', 'service_role', 'EXECUTE'),
         ('function', 'strip_blank(value text)', 'authenticated', 'EXECUTE'),
         ('function', 'strip_blank(value text)', 'service_role', 'EXECUTE'),
         ('function', 'image_timing_problem(timing jsonb)', 'authenticated', 'EXECUTE'),
         ('function', 'image_timing_problem(timing jsonb)', 'service_role', 'EXECUTE'),
         ('function', 'requeue_failed_jobs(batch_id uuid, job_ids uuid[], failed_since timestamp with time zone)',
          'service_role', 'EXECUTE'),
         ('function', 'image_batch_progress(batch uuid)', 'service_role', 'EXECUTE'),
         ('function', 'take_rate_limit_token(bucket text, burst integer, per_s double precision)',
          'service_role', 'EXECUTE'),
         ('function', 'cancel_image_jobs(batch_id uuid, job_ids uuid[], for_user uuid)', 'service_role', 'EXECUTE'),
         ('function', 'dispatcher_succeed_job(job uuid, owner text, image_url text, image_sha256 text, '
                      'width integer, height integer, steps integer, seed bigint, timings jsonb, '
                      'status_polls integer, reused_from uuid)', 'service_role', 'EXECUTE'),
         ('function', 'dispatcher_fail_job(job uuid, owner text, error text, retryable boolean, '
                      'status_polls integer, backoff_base_s double precision, backoff_max_s double precision)',
          'service_role', 'EXECUTE')
  $$,
  'the API roles hold exactly the listed privileges on the public schema'
);

select * from finish();
rollback;
