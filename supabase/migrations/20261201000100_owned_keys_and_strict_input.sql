-- Every stored object has one owner and one job, and everything the storage key
-- and the worker need is checked when the row is inserted (PostgREST inserts
-- included), so a bad request is refused before it costs GPU time.
--
-- 1. One definition of blank (worker/text.py holds the same set; a test checks
--    they agree): Unicode white space plus zero-width characters.
-- 2. Timed prompts: each {index, startTime, endTime} is checked (an integer index,
--    finite times with at most millisecond precision, no duplicate index), and
--    project ids must already be the names they are stored under (no cleaning).
-- 3. Projects have an owner: the first caller to use a project id owns it; another
--    caller is refused. Batches made with the anon or service-role key share one
--    identity (user_id null), so they own projects together, apart from every user.
-- 4. The storage key is computed here, at insert, and kept on the job.
-- 5. A job records the hash of its stored bytes and the job it reused; reuse only
--    copies bytes whose hash matches the earlier job's record.
-- 6. submissions counts every RunPod submission of a job, never reset (requeues
--    reset attempts): webhook URLs carry it, so an old submission's URL is dead.

create function public.strip_blank(value text) returns text
language sql immutable parallel safe set search_path = '' as $$
  select regexp_replace(
    value,
    '^[\u0009-\u000d\u0020\u0085\u00a0\u1680\u180e\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]+'
    '|[\u0009-\u000d\u0020\u0085\u00a0\u1680\u180e\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]+$',
    '', 'g')
$$;

-- What is wrong with one timed prompt, or null if nothing is.
create function public.image_timing_problem(timing jsonb) returns text
language plpgsql immutable set search_path = '' as $$
declare
  key text;
  value numeric;
begin
  if jsonb_typeof(timing) is distinct from 'object' then
    return 'must be an object {index, startTime, endTime}';
  end if;
  for key in select jsonb_object_keys(timing) loop
    if key not in ('index', 'startTime', 'endTime') then
      return format('%s: unknown field (allowed: index, startTime, endTime)', key);
    end if;
  end loop;
  if jsonb_typeof(timing -> 'index') is distinct from 'number'
     or (timing ->> 'index')::numeric <> trunc((timing ->> 'index')::numeric)
     or (timing ->> 'index')::numeric not between 0 and 99999 then
    return format('index: must be an integer from 0 to 99999, got %s', coalesce(timing ->> 'index', 'null'));
  end if;
  foreach key in array array['startTime', 'endTime'] loop
    if jsonb_typeof(timing -> key) is distinct from 'number' then
      return format('%s: must be a number of seconds, got %s', key, coalesce(left(timing ->> key, 40), 'null'));
    end if;
    value := (timing ->> key)::numeric;
    if value not between 0 and 1000000 or scale(trim_scale(value)) > 3 then
      return format('%s: must be from 0 to 1000000 seconds with at most 3 decimals, got %s',
                    key, left(timing ->> key, 40));
    end if;
  end loop;
  if (timing ->> 'endTime')::numeric < (timing ->> 'startTime')::numeric then
    return 'endTime: must not be before startTime';
  end if;
  return null;
end
$$;

-- The key a job's image is stored under. Timed prompts keep the names the video
-- pipeline expects from the old edge function; numbers are written as JavaScript
-- writes them (4.50 -> 4.5), which is what that function produced.
create function public.image_job_storage_path(job uuid, project text, timing jsonb) returns text
language sql immutable set search_path = '' as $$
  select case
    when timing is null then format('generated-images/%s.png', job)
    else format('%s/images/image_%s_%s_to_%s.png',
                coalesce(project, 'timed-images/' || job),
                lpad((timing ->> 'index')::numeric::bigint::text,
                     greatest(3, length((timing ->> 'index')::numeric::bigint::text)), '0'),
                trim_scale((timing ->> 'startTime')::numeric),
                trim_scale((timing ->> 'endTime')::numeric))
  end
$$;

create table public.image_projects (
  project_id text primary key,
  -- null: the anon and service-role keys' shared identity
  owner_id uuid references auth.users (id) on delete cascade,
  created_at timestamptz not null default now()
);
alter table public.image_projects enable row level security;
revoke all on public.image_projects from public, anon, authenticated;
grant all on public.image_projects to service_role;
create policy "users read their own projects" on public.image_projects
  for select to authenticated
  using (owner_id = (select auth.uid()));
grant select on public.image_projects to authenticated;

alter table public.image_jobs
  add column image_sha256 text check (image_sha256 ~ '^[0-9a-f]{64}$'),
  add column reused_from uuid references public.image_jobs (id) on delete set null,
  add column submissions integer not null default 0 check (submissions >= 0);

create or replace function public.image_batches_validate() returns trigger
language plpgsql set search_path = '' as $$
declare
  n integer := coalesce(cardinality(new.prompts), 0);
  i integer;
  prompt text;
  problem text;
  duplicates text;
begin
  if n = 0 then
    raise exception using errcode = 'check_violation',
      message = 'prompts: at least 1 prompt is required';
  end if;
  if array_ndims(new.prompts) <> 1 then
    raise exception using errcode = 'check_violation',
      message = 'prompts: must be a flat list of strings';
  end if;
  if n > 100 then
    raise exception using errcode = 'check_violation',
      message = format('prompts: at most 100 prompts per batch, got %s', n);
  end if;
  for i in 1 .. n loop
    prompt := public.strip_blank(new.prompts[i]);
    if prompt is null or prompt = '' then
      raise exception using errcode = 'check_violation',
        message = format('prompts[%s]: prompt is empty or blank', i - 1);
    end if;
    if char_length(prompt) > 1000 then
      raise exception using errcode = 'check_violation',
        message = format('prompts[%s]: prompt is %s characters long, the limit is 1000',
                         i - 1, char_length(prompt));
    end if;
  end loop;
  if new.quality is null or new.quality not in ('basic', 'high') then
    raise exception using errcode = 'check_violation',
      message = format('quality: must be "basic" or "high", got %s',
                       coalesce(quote_literal(left(new.quality, 40)), 'null'));
  end if;
  if new.aspect_ratio is null or new.aspect_ratio not in ('16:9', '1:1', '9:16') then
    raise exception using errcode = 'check_violation',
      message = format('aspect_ratio: must be "16:9", "1:1" or "9:16", got %s',
                       coalesce(quote_literal(left(new.aspect_ratio, 40)), 'null'));
  end if;
  if new.seed is not null and new.seed not between 0 and 4294967295 then
    raise exception using errcode = 'check_violation',
      message = format('seed: must be between 0 and 4294967295, got %s', new.seed);
  end if;
  if new.project_id is not null and new.project_id !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' then
    raise exception using errcode = 'check_violation',
      message = 'project_id: 1 to 128 letters, digits, ".", "_" or "-", starting with a letter or digit';
  end if;
  if new.timings is not null then
    if jsonb_typeof(new.timings) <> 'array' or jsonb_array_length(new.timings) <> n then
      raise exception using errcode = 'check_violation',
        message = 'timings: must be a list with one {index, startTime, endTime} per prompt';
    end if;
    for i in 0 .. n - 1 loop
      problem := public.image_timing_problem(new.timings -> i);
      if problem is not null then
        raise exception using errcode = 'check_violation',
          message = format('timings[%s].%s', i, problem);
      end if;
    end loop;
    select string_agg(index::text, ', ' order by index) into duplicates
      from (select (t ->> 'index')::numeric::bigint as index
              from jsonb_array_elements(new.timings) t
             group by 1 having count(*) > 1) d;
    if duplicates is not null then
      raise exception using errcode = 'check_violation',
        message = format('timings: each index may appear once in a batch, repeated: %s', duplicates);
    end if;
  end if;
  return new;
end
$$;

-- One job per prompt, each with its storage key, and the project claimed for the
-- batch's owner (or refused if another owns it). Security definer: the frontend
-- may insert batches but never jobs or projects.
create or replace function public.image_batches_create_jobs() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  n integer := cardinality(new.prompts);
  project_owner uuid;
begin
  if new.project_id is not null then
    -- A concurrent first use waits here for the other insert, then sees its row.
    insert into public.image_projects (project_id, owner_id) values (new.project_id, new.user_id)
    on conflict (project_id) do nothing;
    select p.owner_id into project_owner from public.image_projects p where p.project_id = new.project_id;
    if project_owner is distinct from new.user_id then
      raise exception using errcode = 'insufficient_privilege',
        message = format('project_id: the project %s belongs to another user', new.project_id);
    end if;
  end if;

  insert into public.image_jobs
    (id, batch_id, user_id, position, prompt, quality, aspect_ratio, seed, width, height, steps,
     storage_path)
  select p.id, new.id, new.user_id, p.ordinality - 1, public.strip_blank(p.prompt),
         new.quality, new.aspect_ratio, new.seed,
         case new.aspect_ratio when '9:16' then 576 else 1024 end,
         case new.aspect_ratio when '16:9' then 576 else 1024 end,
         case new.quality when 'high' then 16 else 9 end,
         public.image_job_storage_path(p.id, new.project_id, new.timings -> (p.ordinality - 1)::int)
  from (select gen_random_uuid() as id, u.prompt, u.ordinality
          from unnest(new.prompts) with ordinality as u (prompt, ordinality)) p;

  insert into public.image_job_events (batch_id, kind, payload)
  values (new.id, 'progress', jsonb_build_object(
    'completed', 0, 'failed', 0, 'total', n,
    'message', format('Creating %s image jobs...', n)));
  return null;
end
$$;

-- Rows from before this migration: unfinished ones with a timing that would make a
-- bad key fail now, with the reason; every row gets its key, then keys are required.
update public.image_jobs j
   set status = 'failed', finished_at = now(), lease_owner = null, lease_expires_at = null,
       error = format('timings[%s].%s', j.position, public.image_timing_problem(b.timings -> j.position))
  from public.image_batches b
 where b.id = j.batch_id and j.status in ('queued', 'submitted', 'running') and b.timings is not null
   and public.image_timing_problem(b.timings -> j.position) is not null;
update public.image_jobs j
   set storage_path = case
         when b.timings is null or public.image_timing_problem(b.timings -> j.position) is not null
           then public.image_job_storage_path(j.id, null, null)
         else public.image_job_storage_path(j.id, b.project_id, b.timings -> j.position)
       end
  from public.image_batches b
 where b.id = j.batch_id and j.storage_path is null;
alter table public.image_jobs alter column storage_path set not null;

-- Projects used before this migration belong to their first batch's owner.
insert into public.image_projects (project_id, owner_id, created_at)
select distinct on (project_id) project_id, user_id, created_at
  from public.image_batches
 where project_id is not null and project_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'
 order by project_id, created_at
on conflict do nothing;

-- The storage key is the row's own now: succeeding records the stored bytes' hash
-- and the job whose bytes were reused, and no longer takes a key.
drop function public.dispatcher_succeed_job(
  uuid, text, text, text, integer, integer, integer, bigint, jsonb, integer, uuid);
create function public.dispatcher_succeed_job(
  job uuid, owner text, image_url text, image_sha256 text, width integer, height integer,
  steps integer, seed bigint, timings jsonb, status_polls integer, reused_from uuid default null
) returns boolean
language plpgsql set search_path = '' as $$
declare
  finished public.image_jobs;
begin
  perform from public.image_batches b
   where b.id = (select batch_id from public.image_jobs where id = job) for no key update;
  update public.image_jobs j
     set status = 'succeeded', image_url = dispatcher_succeed_job.image_url,
         image_sha256 = dispatcher_succeed_job.image_sha256, width = dispatcher_succeed_job.width,
         height = dispatcher_succeed_job.height, steps = dispatcher_succeed_job.steps,
         seed = dispatcher_succeed_job.seed, timings = dispatcher_succeed_job.timings,
         reused_from = dispatcher_succeed_job.reused_from,
         status_polls = j.status_polls + dispatcher_succeed_job.status_polls, error = null,
         finished_at = now(), lease_owner = null, lease_expires_at = null
   where j.id = job and j.lease_owner = owner and j.status in ('submitted', 'running')
  returning * into finished;
  if not found then
    return false;
  end if;
  insert into public.image_job_events (batch_id, job_id, kind, payload)
  values (finished.batch_id, finished.id, 'image', jsonb_build_object(
    'job_id', finished.id, 'position', finished.position, 'url', finished.image_url,
    'seed', finished.seed, 'reused_from', reused_from));
  perform public.image_batch_progress(finished.batch_id);
  return true;
end
$$;

revoke all on function
  public.strip_blank(text), public.image_timing_problem(jsonb),
  public.image_job_storage_path(uuid, text, jsonb),
  public.dispatcher_succeed_job(uuid, text, text, text, integer, integer, integer, bigint, jsonb, integer, uuid)
  from public, anon, authenticated;
-- The validation trigger runs as the inserting user, so its pure helpers must be callable.
grant execute on function public.strip_blank(text), public.image_timing_problem(jsonb)
  to authenticated, service_role;
grant execute on function
  public.dispatcher_succeed_job(uuid, text, text, text, integer, integer, integer, bigint, jsonb, integer, uuid)
  to service_role;
