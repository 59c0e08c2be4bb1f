-- The bucket the dispatcher writes PNGs to. Public read: the frontend and the
-- video pipeline fetch images by their public URL. Only the service role
-- writes (it bypasses the storage policies), so no write policy is granted.
insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
values ('generated-assets', 'generated-assets', true, 20 * 1024 * 1024,
        array['image/png', 'image/jpeg', 'image/webp'])
on conflict (id) do update
  set public = excluded.public,
      file_size_limit = excluded.file_size_limit,
      allowed_mime_types = excluded.allowed_mime_types;
