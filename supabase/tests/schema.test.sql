-- The contract with the frontend: the names it relies on, the bucket, and Realtime.
begin;
create extension if not exists pgtap with schema extensions;
select plan(16);

select has_table('public', 'image_batches', 'image_batches exists');
select columns_are('public', 'image_batches',
  array['id', 'user_id', 'prompts', 'quality', 'aspect_ratio', 'seed', 'project_id', 'timings', 'created_at',
        'last_event_seq', 'format', 'output_quality', 'webhook', 'webhook_events', 'character_id',
        'character_weight', 'prompt_characters'],
  'image_batches has the frontend''s columns');
select has_table('public', 'image_jobs', 'image_jobs exists');
select col_is_pk('public', 'image_job_events', 'id', 'events are ordered by an identity key');
select has_index('public', 'image_job_events', 'image_job_events_stream_idx', array['batch_id', 'seq'],
  'streamed events have a per-batch position (SSE Last-Event-ID)');
select col_default_is('public', 'image_batches', 'quality', 'basic', 'quality defaults to basic');
select col_default_is('public', 'image_batches', 'aspect_ratio', '16:9', 'aspect ratio defaults to 16:9');
select ok((select public from storage.buckets where id = 'generated-assets'), 'the bucket is public');
select is((select allowed_mime_types from storage.buckets where id = 'generated-assets'),
          array['image/png', 'image/jpeg', 'image/webp'], 'the bucket takes images only');
select ok((select file_size_limit from storage.buckets where id = 'generated-assets') > 0,
          'the bucket has a size limit');
select ok(not (select public from storage.buckets where id = 'character-adapters'),
          'the adapters'' bucket is private');
select is((select allowed_mime_types from storage.buckets where id = 'character-adapters'),
          array['application/octet-stream'], 'the adapters'' bucket takes .safetensors files only');
select ok(
  (select relrowsecurity from pg_class where oid = 'public.characters'::regclass),
  'RLS is on for characters');
select set_eq(
  $$select tablename::text from pg_publication_tables where pubname = 'supabase_realtime'$$,
  array['image_batches', 'image_jobs', 'image_job_events'],
  'Realtime publishes the three tables');
select ok(
  (select relrowsecurity from pg_class where oid = 'public.image_jobs'::regclass),
  'RLS is on for image_jobs');
select function_privs_are('public', 'requeue_failed_jobs', array['uuid', 'uuid[]', 'timestamp with time zone'],
  'authenticated', array[]::text[], 'authenticated cannot execute the admin requeue');

select * from finish();
rollback;
