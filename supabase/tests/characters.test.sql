-- Characters: who reads, changes and uses which, as the real roles with JWT claims set the
-- way PostgREST sets them; and what a batch that names one makes. Rolled back.
begin;
create extension if not exists pgtap with schema extensions;
select plan(20);

insert into auth.users (id, email) values
  ('aaaaaaaa-0000-0000-0000-0000000000c1', 'pgtap-ca-' || gen_random_uuid() || '@example.test'),
  ('bbbbbbbb-0000-0000-0000-0000000000c2', 'pgtap-cb-' || gen_random_uuid() || '@example.test');

-- As `zimage characters add` makes them (the service role): A's private Napoleon and A's
-- shared Josephine; B's private Nelson.
insert into public.characters (id, owner_id, name, trigger_phrase, adapter_path, adapter_sha256, adapter_bytes,
                               default_weight, shared)
values ('aaaaaaaa-cccc-0000-0000-000000000001', 'aaaaaaaa-0000-0000-0000-0000000000c1', 'Napoleon', 'napoleon_zit',
        'pgtap/napoleon.safetensors', repeat('a', 64), 1000, 0.8, false),
       ('aaaaaaaa-cccc-0000-0000-000000000002', 'aaaaaaaa-0000-0000-0000-0000000000c1', 'Josephine', null,
        'pgtap/josephine.safetensors', repeat('b', 64), 1000, 1.0, true),
       ('bbbbbbbb-cccc-0000-0000-000000000003', 'bbbbbbbb-0000-0000-0000-0000000000c2', 'Nelson', 'nelson_zit',
        'pgtap/nelson.safetensors', repeat('c', 64), 1000, 1.0, false);

set local role anon;
set local request.jwt.claims = '{"role": "anon"}';
select throws_ok($$select * from public.characters$$, '42501', null, 'anon reads no characters');

set local role authenticated;
set local request.jwt.claims =
  '{"sub": "bbbbbbbb-0000-0000-0000-0000000000c2", "role": "authenticated", "aud": "authenticated"}';

select set_eq($$select name from public.characters where name in ('Napoleon', 'Josephine', 'Nelson')$$,
              array['Josephine', 'Nelson'], 'B reads their own and the shared characters, not A''s private one');
select throws_ok($$select adapter_path from public.characters$$, '42501', null,
                 'B cannot read where adapters are stored');
select throws_ok(
  $$insert into public.image_batches (prompts, character_id)
    values (array['at Austerlitz'], 'aaaaaaaa-cccc-0000-0000-000000000001')$$,
  '23514', 'character_id: no character aaaaaaaa-cccc-0000-0000-000000000001 that you may use (it does not exist, or is another user''s and not shared)',
  'B cannot use A''s private character for a batch');
select throws_ok(
  $$insert into public.image_batches (prompts, prompt_characters)
    values (array['at sea', 'at Austerlitz'],
            '[null, {"id": "aaaaaaaa-cccc-0000-0000-000000000001"}]')$$,
  '23514', 'prompt_characters[1].id: no character aaaaaaaa-cccc-0000-0000-000000000001 that you may use (it does not exist, or is another user''s and not shared)',
  'nor for one prompt');
select throws_ok(
  $$insert into public.image_batches (prompts, character_id)
    values (array['x'], 'dddddddd-cccc-0000-0000-000000000009')$$,
  '23514', 'character_id: no character dddddddd-cccc-0000-0000-000000000009 that you may use (it does not exist, or is another user''s and not shared)',
  'an unknown character reads the same as a private one');
select is_empty(
  $$update public.characters set name = 'Mine now' where name = 'Josephine' returning id$$,
  'B cannot change A''s shared character');
select is_empty($$delete from public.characters where name = 'Josephine' returning id$$,
                'nor remove it');
select throws_ok($$update public.characters set adapter_path = 'x' where name = 'Nelson'$$, '42501', null,
                 'B cannot point their character at another file');
select lives_ok($$update public.characters set default_weight = 0.7 where name = 'Nelson'$$,
                'B changes their own character''s weight');

-- B's batch: Nelson for the batch, Josephine (shared) for one prompt, at 0.5.
select lives_ok(
  $$insert into public.image_batches (id, prompts, character_id, prompt_characters)
    values ('bbbbbbbb-1111-cccc-0000-000000000000', array['on the deck', 'nelson_zit at Trafalgar', 'in Paris'],
            'bbbbbbbb-cccc-0000-0000-000000000003',
            '[null, null, {"id": "aaaaaaaa-cccc-0000-0000-000000000002", "weight": 0.5}]')$$,
  'B uses their own character and a shared one');
select results_eq(
  $$select prompt, character_id, character_weight from public.image_jobs
     where batch_id = 'bbbbbbbb-1111-cccc-0000-000000000000' order by position$$,
  $$values ('nelson_zit, on the deck', 'bbbbbbbb-cccc-0000-0000-000000000003'::uuid, 0.7::real),
           ('nelson_zit at Trafalgar', 'bbbbbbbb-cccc-0000-0000-000000000003'::uuid, 0.7::real),
           ('in Paris', 'aaaaaaaa-cccc-0000-0000-000000000002'::uuid, 0.5::real)$$,
  'each job has its character, the trigger phrase once, and its weight');
select throws_ok($$select adapter_path, adapter_sha256 from public.image_jobs$$, '42501', null,
                 'B cannot read the jobs'' adapter keys');

-- Refusals that name the field.
select throws_ok(
  $$insert into public.image_batches (prompts, character_weight) values (array['x'], 0.5)$$,
  '23514', 'character_weight: applies only with a character_id', 'a weight needs a character');
select throws_ok(
  $$insert into public.image_batches (prompts, character_id, character_weight)
    values (array['x'], 'bbbbbbbb-cccc-0000-0000-000000000003', 3)$$,
  '23514', 'character_weight: must be between 0 and 2, got 3', 'a weight out of range');
select throws_ok(
  $$insert into public.image_batches (prompts, prompt_characters) values (array['x', 'y'], '[null]')$$,
  '23514', 'prompt_characters: must be a list with one entry (null or {"id", "weight"}) per prompt',
  'one entry per prompt');
select throws_ok(
  $$insert into public.image_batches (prompts, prompt_characters) values (array['x'], '[{"id": "nelson"}]')$$,
  '23514', 'prompt_characters[0].id: must be a character id (a UUID)', 'an id that is not a UUID');
select throws_ok(
  $$insert into public.image_batches (prompts, prompt_characters)
    values (array['x'], '[{"id": "bbbbbbbb-cccc-0000-0000-000000000003", "weight": "high"}]')$$,
  '23514', 'prompt_characters[0].weight: must be a number between 0 and 2, got "high"', 'a weight that is not a number');
select throws_ok(
  $$insert into public.image_batches (prompts, prompt_characters)
    values (array['x'], '[{"id": "bbbbbbbb-cccc-0000-0000-000000000003", "lora": "x"}]')$$,
  '23514', 'prompt_characters[0]: must be null or {"id": a character id, "weight": 0-2}', 'an unknown key');
select throws_ok(
  $$insert into public.image_batches (prompts, character_id)
    values (array[repeat('w', 995)], 'bbbbbbbb-cccc-0000-0000-000000000003')$$,
  '23514', 'prompts[0]: with the trigger phrase of character Nelson the prompt is over 1000 characters',
  'the trigger phrase counts toward the prompt limit');

select * from finish();
rollback;
