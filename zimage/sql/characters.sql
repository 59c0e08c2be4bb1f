-- The character registry's SQL (zimage characters).

-- name: find_user
select id from auth.users where id::text = %(user)s or lower(email) = lower(%(user)s) limit 1;

-- name: insert
insert into public.characters
  (id, owner_id, name, trigger_phrase, adapter_path, adapter_sha256, adapter_bytes, default_weight, shared)
values (%(id)s, %(owner_id)s, %(name)s, %(trigger_phrase)s, %(adapter_path)s, %(adapter_sha256)s,
        %(adapter_bytes)s, %(default_weight)s, %(shared)s)
returning id, owner_id, name, trigger_phrase, adapter_sha256, adapter_bytes, default_weight, shared, created_at;

-- name: list
select c.id, c.name, c.trigger_phrase, c.default_weight, c.shared, c.adapter_sha256, c.adapter_bytes,
       c.created_at, coalesce(u.email, c.owner_id::text) as owner
  from public.characters c join auth.users u on u.id = c.owner_id
 where %(owner)s::text is null or c.owner_id::text = %(owner)s or lower(u.email) = lower(%(owner)s)
 order by c.name, c.created_at;

-- name: delete
delete from public.characters where id = %(id)s returning id, name, adapter_path;
