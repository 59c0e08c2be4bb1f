-- Bad input is refused by the database with a message that names the field,
-- and a refused insert leaves nothing behind (no batch, no jobs, no events).
begin;
create extension if not exists pgtap with schema extensions;
select plan(16);

insert into auth.users (id) values ('aaaaaaaa-0000-0000-0000-000000000001');
set local role authenticated;
set local request.jwt.claims = '{"sub": "aaaaaaaa-0000-0000-0000-000000000001", "role": "authenticated"}';

select throws_ok($$insert into public.image_batches (prompts) values (array['a', ''])$$,
  '23514', 'prompts[1]: prompt is empty or blank', 'an empty prompt');
select throws_ok($$insert into public.image_batches (prompts) values (array[E' \t\n '])$$,
  '23514', 'prompts[0]: prompt is empty or blank', 'a blank prompt');
select throws_ok($$insert into public.image_batches (prompts) values (array[null::text])$$,
  '23514', 'prompts[0]: prompt is empty or blank', 'a null prompt');
select throws_ok($$insert into public.image_batches (prompts) values (array[repeat('x', 1001)])$$,
  '23514', 'prompts[0]: prompt is 1001 characters long, the limit is 1000', 'a 1001-character prompt');
select lives_ok($$insert into public.image_batches (prompts) values (array[repeat('é', 1000)])$$,
  'a 1000-character prompt (counted in characters, not bytes) is fine');
select throws_ok($$insert into public.image_batches (prompts) values ('{}')$$,
  '23514', 'prompts: at least 1 prompt is required', 'zero prompts');
select throws_ok($$insert into public.image_batches (prompts) values (null)$$,
  '23514', 'prompts: at least 1 prompt is required', 'no prompts at all');
select throws_ok(
  $$insert into public.image_batches (prompts) select array_agg('p' || i) from generate_series(1, 101) i$$,
  '23514', 'prompts: at most 100 prompts per batch, got 101', '101 prompts');
select throws_ok($$insert into public.image_batches (prompts, quality) values (array['a'], 'ultra')$$,
  '23514', 'quality: must be "basic" or "high", got ''ultra''', 'an unknown quality');
select throws_ok($$insert into public.image_batches (prompts, aspect_ratio) values (array['a'], '4:3')$$,
  '23514', 'aspect_ratio: must be "16:9", "1:1" or "9:16", got ''4:3''', 'an unknown aspect ratio');
select throws_ok($$insert into public.image_batches (prompts, seed) values (array['a'], -1)$$,
  '23514', 'seed: must be between 0 and 4294967295, got -1', 'a negative seed');
-- Postgres text cannot hold NUL: it is refused as SQL text and as JSON (PostgREST's path).
select throws_ok($$insert into public.image_batches (prompts) values (array[E'a\u0000b'])$$,
  '42601', null, 'a NUL byte in SQL text');
select throws_ok(
  $$insert into public.image_batches (prompts)
    select array(select jsonb_array_elements_text('["a\u0000b"]'::jsonb))$$,
  '22P05', null, 'a NUL byte in JSON');
select throws_ok(
  $$insert into public.image_batches (prompts, timings) values (array['a', 'b'], '[{"index": 0}]')$$,
  '23514', 'timings: must be a list with one {index, startTime, endTime} per prompt',
  'timings that do not match the prompts');

select is((select count(*)::int from public.image_batches), 1, 'only the valid batch was written');
select is((select count(*)::int from public.image_jobs), 1, 'and only its job');

select * from finish();
rollback;
