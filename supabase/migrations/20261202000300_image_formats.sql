-- Output formats: a batch asks for png (lossless, the default, as before), webp or jpeg, with
-- output_quality (1-100) for the lossy two. Its jobs carry both to the worker; their storage
-- key's extension follows the format (.png, .webp, .jpg), so the content type Storage serves
-- and the key agree. The bucket already allows the three types (20261124000300).

alter table public.image_batches
  add column format text not null default 'png',
  add column output_quality integer;

alter table public.image_jobs
  add column format text not null default 'png' check (format in ('png', 'webp', 'jpeg')),
  add column output_quality integer check (output_quality between 1 and 100);

comment on column public.image_batches.format is 'png (default, lossless) | webp | jpeg';
comment on column public.image_batches.output_quality is
  'webp and jpeg only: 1-100, 90 when not given; null for png';

-- A trigger of its own, beside image_batches_validate (which fires first, by name): the
-- message names the field as every other refusal does, and a lossy batch without a quality
-- gets the default here, so the rows (and seeded reuse, which matches on it) say what was made.
create function public.image_batches_validate_output() returns trigger
language plpgsql set search_path = '' as $$
begin
  if new.format is null or new.format not in ('png', 'webp', 'jpeg') then
    raise exception using errcode = 'check_violation',
      message = format('format: must be "png", "webp" or "jpeg", got %s',
                       coalesce(quote_literal(left(new.format, 40)), 'null'));
  end if;
  if new.format = 'png' and new.output_quality is not null then
    raise exception using errcode = 'check_violation',
      message = 'output_quality: applies to webp and jpeg only (png is lossless)';
  end if;
  if new.output_quality is not null and new.output_quality not between 1 and 100 then
    raise exception using errcode = 'check_violation',
      message = format('output_quality: must be between 1 and 100, got %s', new.output_quality);
  end if;
  if new.format <> 'png' then
    new.output_quality := coalesce(new.output_quality, 90);
  end if;
  return new;
end
$$;

revoke all on function public.image_batches_validate_output() from public, anon, authenticated, service_role;

create trigger image_batches_validate_output
  before insert or update of format, output_quality on public.image_batches
  for each row execute function public.image_batches_validate_output();

-- The key's extension follows the format; otherwise as image_job_storage_path(uuid, text, jsonb).
create function public.image_job_storage_path(job uuid, project text, timing jsonb, format text)
returns text language sql immutable set search_path = '' as $$
  select case
    when timing is null then format('generated-images/%s.%s', job, extension)
    else format('%s/images/image_%s_%s_to_%s.%s',
                coalesce(project, 'timed-images/' || job),
                lpad((timing ->> 'index')::numeric::bigint::text,
                     greatest(3, length((timing ->> 'index')::numeric::bigint::text)), '0'),
                trim_scale((timing ->> 'startTime')::numeric),
                trim_scale((timing ->> 'endTime')::numeric),
                extension)
  end
  from (select case format when 'jpeg' then 'jpg' else format end as extension) e
$$;

revoke all on function public.image_job_storage_path(uuid, text, jsonb, text)
  from public, anon, authenticated, service_role;

-- As in 20261201000100, with the batch's format and output quality passed on to its jobs.
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
     format, output_quality, storage_path)
  select p.id, new.id, new.user_id, p.ordinality - 1, public.strip_blank(p.prompt),
         new.quality, new.aspect_ratio, new.seed,
         case new.aspect_ratio when '9:16' then 576 else 1024 end,
         case new.aspect_ratio when '16:9' then 576 else 1024 end,
         case new.quality when 'high' then 16 else 9 end,
         new.format, new.output_quality,
         public.image_job_storage_path(p.id, new.project_id, new.timings -> (p.ordinality - 1)::int,
                                       new.format)
  from (select gen_random_uuid() as id, u.prompt, u.ordinality
          from unnest(new.prompts) with ordinality as u (prompt, ordinality)) p;

  insert into public.image_job_events (batch_id, kind, payload)
  values (new.id, 'progress', jsonb_build_object(
    'completed', 0, 'failed', 0, 'total', n,
    'message', format('Creating %s image jobs...', n)));
  return null;
end
$$;

drop function public.image_job_storage_path(uuid, text, jsonb);

grant insert (format, output_quality) on public.image_batches to authenticated;
grant select (format, output_quality) on public.image_jobs to authenticated;
