-- Characters: the same person in every scene. A character is a LoRA adapter for the Z-Image
-- transformer (a .safetensors file in the private character-adapters bucket) with a trigger
-- phrase and a default weight; a batch, or one of its prompts, names one by id. Its jobs keep
-- a copy of the adapter's key, hash and weight as they were at insert time, so a job runs
-- with what was asked for, whatever later happens to the character's row.

create table public.characters (
  id uuid primary key default gen_random_uuid(),
  owner_id uuid not null references auth.users (id) on delete cascade,
  name text not null check (char_length(name) between 1 and 100 and name !~ '[[:cntrl:]]'),
  trigger_phrase text check (char_length(trigger_phrase) between 1 and 200
                             and trigger_phrase !~ '[[:cntrl:]]'),
  adapter_path text not null unique check (char_length(adapter_path) between 1 and 512),
  adapter_sha256 text not null check (adapter_sha256 ~ '^[0-9a-f]{64}$'),
  adapter_bytes bigint not null check (adapter_bytes > 0),
  default_weight real not null default 1.0 check (default_weight between 0 and 2),
  shared boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (owner_id, name)
);

comment on table public.characters is
  'LoRA adapters by character; owners manage theirs, everyone reads the shared ones';
comment on column public.characters.trigger_phrase is
  'put before each prompt that uses the character (unless the prompt already says it)';
comment on column public.characters.adapter_path is 'its key in the private character-adapters bucket';

alter table public.characters enable row level security;

create policy "users read their own and the shared characters" on public.characters
  for select to authenticated using (owner_id = (select auth.uid()) or shared);
create policy "users change their own characters" on public.characters
  for update to authenticated using (owner_id = (select auth.uid())) with check (owner_id = (select auth.uid()));
create policy "users remove their own characters" on public.characters
  for delete to authenticated using (owner_id = (select auth.uid()));

-- Adding a character means uploading its file, which only the service role may do (zimage
-- characters add); users read and manage rows. The adapter's key is not theirs to change.
revoke all on public.characters from public, anon, authenticated, service_role;
grant all on public.characters to service_role;
grant select (id, owner_id, name, trigger_phrase, adapter_sha256, adapter_bytes, default_weight, shared,
              created_at, updated_at) on public.characters to authenticated;
grant update (name, trigger_phrase, default_weight, shared) on public.characters to authenticated;
grant delete on public.characters to authenticated;

create function public.characters_touch() returns trigger
language plpgsql set search_path = '' as $$
begin
  new.updated_at := now();
  return new;
end
$$;

revoke all on function public.characters_touch() from public, anon, authenticated, service_role;

create trigger characters_touch before update on public.characters
  for each row execute function public.characters_touch();

-- Private: adapters are read only through the short-lived URLs the dispatcher signs for the
-- worker. 512 MiB holds a rank-64 adapter of the whole 6B transformer in bfloat16.
insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
values ('character-adapters', 'character-adapters', false, 512 * 1024 * 1024,
        array['application/octet-stream'])
on conflict (id) do update
  set public = excluded.public,
      file_size_limit = excluded.file_size_limit,
      allowed_mime_types = excluded.allowed_mime_types;

alter table public.image_batches
  add column character_id uuid,
  add column character_weight real,
  add column prompt_characters jsonb;

comment on column public.image_batches.character_id is 'the character of every prompt without one of its own';
comment on column public.image_batches.character_weight is 'the adapter''s weight (0-2); default: the character''s';
comment on column public.image_batches.prompt_characters is
  'one entry per prompt: null (the batch''s character) or {"id": uuid, "weight": 0-2}';

alter table public.image_jobs
  add column character_id uuid references public.characters (id) on delete set null,
  add column character_weight real check (character_weight between 0 and 2),
  add column adapter_path text,
  add column adapter_sha256 text check (adapter_sha256 ~ '^[0-9a-f]{64}$'),
  add constraint image_jobs_adapter_check
    check ((adapter_path is null) = (adapter_sha256 is null) and (adapter_path is null) = (character_weight is null));

grant insert (character_id, character_weight, prompt_characters) on public.image_batches to authenticated;
grant select (character_id, character_weight) on public.image_jobs to authenticated;

-- The character a prompt asked for, if the batch's user may use it (their own, or shared).
-- One answer for "no such character" and "someone else's": the message must not tell a
-- user which private ids exist.
create function public.usable_character(wanted uuid, for_user uuid)
returns public.characters language sql stable security definer set search_path = '' as $$
  select c.* from public.characters c where c.id = wanted and (c.owner_id = for_user or c.shared)
$$;

revoke all on function public.usable_character(uuid, uuid) from public, anon, authenticated, service_role;

-- The prompt as the worker gets it: the trigger phrase first, unless the prompt already says it.
create function public.character_prompt(prompt text, trigger_phrase text)
returns text language sql immutable set search_path = '' as $$
  select case when trigger_phrase is null or strpos(lower(prompt), lower(trigger_phrase)) > 0 then prompt
              else trigger_phrase || ', ' || prompt end
$$;

revoke all on function public.character_prompt(text, text) from public, anon, authenticated, service_role;

-- Refused at insert time, naming the field: a malformed entry, a weight out of range, a
-- character the user may not use, a prompt the trigger phrase would push over 1000 characters.
create function public.image_batches_validate_characters() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  n integer := coalesce(cardinality(new.prompts), 0);
  i integer;
  entry jsonb;
  field text;
  chosen uuid;
  weight jsonb;
  found public.characters;
begin
  if new.character_weight is not null and new.character_id is null then
    raise exception using errcode = 'check_violation',
      message = 'character_weight: applies only with a character_id';
  end if;
  if new.character_weight is not null and not (new.character_weight between 0 and 2) then
    raise exception using errcode = 'check_violation',
      message = format('character_weight: must be between 0 and 2, got %s', new.character_weight);
  end if;
  if new.prompt_characters is not null
     and (jsonb_typeof(new.prompt_characters) <> 'array' or jsonb_array_length(new.prompt_characters) <> n) then
    raise exception using errcode = 'check_violation',
      message = 'prompt_characters: must be a list with one entry (null or {"id", "weight"}) per prompt';
  end if;
  for i in 1 .. n loop
    entry := new.prompt_characters -> (i - 1);
    field := format('prompt_characters[%s]', i - 1);
    if entry is null or jsonb_typeof(entry) = 'null' then
      chosen := new.character_id;
      field := 'character_id';
    elsif jsonb_typeof(entry) <> 'object' or not entry ? 'id'
          or exists (select from jsonb_object_keys(entry) k where k not in ('id', 'weight')) then
      raise exception using errcode = 'check_violation',
        message = format('%s: must be null or {"id": a character id, "weight": 0-2}', field);
    else
      if jsonb_typeof(entry -> 'id') <> 'string'
         or (entry ->> 'id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
        raise exception using errcode = 'check_violation',
          message = format('%s.id: must be a character id (a UUID)', field);
      end if;
      weight := entry -> 'weight';
      if weight is not null and jsonb_typeof(weight) <> 'null'
         and (jsonb_typeof(weight) <> 'number' or not ((weight)::numeric between 0 and 2)) then
        raise exception using errcode = 'check_violation',
          message = format('%s.weight: must be a number between 0 and 2, got %s', field, left(weight::text, 40));
      end if;
      chosen := (entry ->> 'id')::uuid;
      field := field || '.id';
    end if;
    continue when chosen is null;
    found := public.usable_character(chosen, new.user_id);
    if found.id is null then
      raise exception using errcode = 'check_violation',
        message = format('%s: no character %s that you may use (it does not exist, or is another user''s '
                         'and not shared)', field, chosen);
    end if;
    if char_length(public.character_prompt(public.strip_blank(new.prompts[i]), found.trigger_phrase)) > 1000 then
      raise exception using errcode = 'check_violation',
        message = format('prompts[%s]: with the trigger phrase of character %s the prompt is over 1000 '
                         'characters', i - 1, found.name);
    end if;
  end loop;
  return new;
end
$$;

revoke all on function public.image_batches_validate_characters() from public, anon, authenticated, service_role;

-- After image_batches_validate (by name), so a prompt is known to be there and well formed.
create trigger image_batches_validate_characters
  before insert on public.image_batches
  for each row execute function public.image_batches_validate_characters();

-- As in 20261202000300, with each job's character resolved: the prompt's own, else the
-- batch's; its weight the entry's, else (for the batch's character) the batch's, else the
-- character's default; its adapter's key and hash copied from the registry.
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
     format, output_quality, storage_path, character_id, character_weight, adapter_path, adapter_sha256)
  select p.id, new.id, new.user_id, p.ordinality - 1,
         public.character_prompt(public.strip_blank(p.prompt), c.trigger_phrase),
         new.quality, new.aspect_ratio, new.seed,
         case new.aspect_ratio when '9:16' then 576 else 1024 end,
         case new.aspect_ratio when '16:9' then 576 else 1024 end,
         case new.quality when 'high' then 16 else 9 end,
         new.format, new.output_quality,
         public.image_job_storage_path(p.id, new.project_id, new.timings -> (p.ordinality - 1)::int,
                                       new.format),
         c.id,
         case when c.id is not null then coalesce(p.weight, p.batch_weight, c.default_weight) end,
         c.adapter_path, c.adapter_sha256
  from (select gen_random_uuid() as id, u.prompt, u.ordinality,
               coalesce((e.entry ->> 'id')::uuid, new.character_id) as character_id,
               (e.entry ->> 'weight')::real as weight,
               case when e.entry ->> 'id' is null then new.character_weight end as batch_weight
          from unnest(new.prompts) with ordinality as u (prompt, ordinality)
          left join lateral (select new.prompt_characters -> (u.ordinality - 1)::int as entry) e on true) p
  left join public.characters c on c.id = p.character_id;

  insert into public.image_job_events (batch_id, kind, payload)
  values (new.id, 'progress', jsonb_build_object(
    'completed', 0, 'failed', 0, 'total', n,
    'message', format('Creating %s image jobs...', n)));
  return null;
end
$$;

