-- Row level security, exercised as the real roles with JWT claims set the way
-- PostgREST sets them. Runs under `supabase test db` and the project's test run,
-- on an empty database and on one that holds other users' rows: every check counts
-- only what this file created, and everything is rolled back.
begin;
create extension if not exists pgtap with schema extensions;
select plan(37);

insert into auth.users (id, email) values
  ('aaaaaaaa-0000-0000-0000-000000000001', 'pgtap-a-' || gen_random_uuid() || '@example.test'),
  ('bbbbbbbb-0000-0000-0000-000000000002', 'pgtap-b-' || gen_random_uuid() || '@example.test');

-- B already has a batch (created as the service role would).
insert into public.image_batches (id, user_id, prompts)
values ('bbbbbbbb-1111-0000-0000-000000000000', 'bbbbbbbb-0000-0000-0000-000000000002',
        array['b first', 'b second']);

-- anon: nothing at all ------------------------------------------------------
set local role anon;
set local request.jwt.claims = '{"role": "anon"}';
select throws_ok($$select * from public.image_batches$$, '42501', null, 'anon cannot read batches');
select throws_ok($$select * from public.image_jobs$$, '42501', null, 'anon cannot read jobs');
select throws_ok($$select * from public.image_job_events$$, '42501', null, 'anon cannot read events');
select throws_ok($$insert into public.image_batches (prompts) values (array['x'])$$, '42501', null,
                 'anon cannot insert batches');
select throws_ok($$select public.requeue_failed_jobs(failed_since => now())$$, '42501', null,
                 'anon cannot requeue');
select throws_ok($$select public.cancel_image_job(gen_random_uuid())$$, '42501', null,
                 'anon cannot cancel');

-- authenticated user A --------------------------------------------------------
set local role authenticated;
set local request.jwt.claims =
  '{"sub": "aaaaaaaa-0000-0000-0000-000000000001", "role": "authenticated", "aud": "authenticated"}';

select lives_ok(
  $$insert into public.image_batches (id, prompts, quality, aspect_ratio)
    values ('aaaaaaaa-1111-0000-0000-000000000000', array['a castle', 'a ship', 'a map'], 'high', '9:16')$$,
  'A inserts a batch the way the frontend does');
select results_eq(
  $$select user_id from public.image_batches$$,
  $$values ('aaaaaaaa-0000-0000-0000-000000000001'::uuid)$$,
  'A sees only their own batch, owned by them by default');
select results_eq(
  $$select position, prompt, quality, aspect_ratio, width, height, steps, status
      from public.image_jobs order by position$$,
  $$values (0, 'a castle', 'high', '9:16', 576, 1024, 16, 'queued'),
           (1, 'a ship', 'high', '9:16', 576, 1024, 16, 'queued'),
           (2, 'a map', 'high', '9:16', 576, 1024, 16, 'queued')$$,
  'A sees the jobs made for their batch, and only those');
select results_eq(
  $$select kind, payload ->> 'message' from public.image_job_events$$,
  $$values ('progress', 'Creating 3 image jobs...')$$,
  'A sees only their own events');
select throws_ok($$select lease_owner, runpod_job_id, status_polls from public.image_jobs$$, '42501', null,
                 'A cannot read the dispatcher''s bookkeeping on their jobs');
select throws_ok($$select image_sha256, submissions from public.image_jobs$$, '42501', null,
                 'nor the stored bytes'' hash or the submission count');
select throws_ok(
  $$insert into public.image_batches (user_id, prompts)
    values ('bbbbbbbb-0000-0000-0000-000000000002', array['forged'])$$,
  '42501', null, 'A cannot insert a batch for B');
select throws_ok(
  $$insert into public.image_batches (user_id, prompts) values (null, array['ownerless'])$$,
  '42501', null, 'A cannot insert an ownerless batch');
select throws_ok(
  $$insert into public.image_jobs (batch_id, position, prompt, quality, aspect_ratio, width, height, steps)
    values ('aaaaaaaa-1111-0000-0000-000000000000', 9, 'x', 'basic', '1:1', 1024, 1024, 9)$$,
  '42501', null, 'A cannot insert jobs directly');
select throws_ok($$update public.image_jobs set status = 'succeeded'$$, '42501', null,
                 'A cannot change a job''s status');
select throws_ok($$update public.image_jobs set attempts = 0, lease_owner = 'me'$$, '42501', null,
                 'A cannot change attempts or leases');
select throws_ok($$update public.image_jobs set image_url = 'https://evil.example/x.png'$$, '42501', null,
                 'A cannot change results');
select throws_ok($$update public.image_batches set quality = 'high'$$, '42501', null,
                 'A cannot change a batch');
select throws_ok($$delete from public.image_batches$$, '42501', null, 'A cannot delete a batch');
select throws_ok($$delete from public.image_jobs$$, '42501', null, 'A cannot delete jobs');
select throws_ok($$insert into public.image_job_events (batch_id, kind)
                   values ('aaaaaaaa-1111-0000-0000-000000000000', 'complete')$$,
                 '42501', null, 'A cannot write events');
select throws_ok($$select public.requeue_failed_jobs(failed_since => now())$$, '42501', null,
                 'A cannot call the admin requeue');
select is(
  (select count(*)::int from public.image_jobs where batch_id = 'bbbbbbbb-1111-0000-0000-000000000000'),
  0, 'A cannot see B''s jobs even by id');
select is(
  public.cancel_image_job((select id from public.image_jobs where position = 1)),
  true, 'A cancels their own queued job');
select is(
  public.cancel_image_job((select id from public.image_jobs where position = 1)),
  false, 'cancelling it again changes nothing');

-- B's rows, seen as the service role, are untouched by A's attempts.
reset role;
select is(
  (select count(*)::int from public.image_jobs
    where batch_id = 'bbbbbbbb-1111-0000-0000-000000000000' and status = 'queued'),
  2, 'B''s jobs are still queued');
set local role authenticated;
select is(
  public.cancel_image_job((select id from public.image_jobs
                            where batch_id = 'bbbbbbbb-1111-0000-0000-000000000000' limit 1)),
  false, 'A cannot cancel B''s job (A cannot even name it)');
reset role;
select is(
  public.cancel_image_job((select id from public.image_jobs
                            where batch_id = 'bbbbbbbb-1111-0000-0000-000000000000' limit 1)),
  false, 'a caller with no user id cancels nothing');
select results_eq(
  $$select status from public.image_jobs where batch_id = 'aaaaaaaa-1111-0000-0000-000000000000'
    order by position$$,
  $$values ('queued'), ('cancelled'), ('queued')$$,
  'only the cancelled job changed');
select is(
  (select count(*)::int from public.image_job_events
    where kind = 'cancelled' and batch_id = 'aaaaaaaa-1111-0000-0000-000000000000'), 1,
  'the cancellation is recorded once');

-- service_role: everything ------------------------------------------------------
set local role service_role;
set local request.jwt.claims = '{"role": "service_role"}';
select is((select count(*)::int from public.image_batches
            where id in ('aaaaaaaa-1111-0000-0000-000000000000', 'bbbbbbbb-1111-0000-0000-000000000000')),
          2, 'service_role reads every user''s batches');
select lives_ok(
  $$update public.image_jobs set status = 'failed', error = 'out of memory', finished_at = now()
     where batch_id = 'bbbbbbbb-1111-0000-0000-000000000000'$$,
  'service_role changes job state');
select is(public.requeue_failed_jobs(batch_id => 'bbbbbbbb-1111-0000-0000-000000000000'), 2,
          'service_role requeues a batch''s failed jobs');
select is(public.requeue_failed_jobs(batch_id => 'bbbbbbbb-1111-0000-0000-000000000000'), 0,
          'requeue is idempotent');
select results_eq(
  $$select kind, payload ->> 'previous_error' from public.image_job_events
     where batch_id = 'bbbbbbbb-1111-0000-0000-000000000000' and job_id is not null$$,
  $$values ('requeued', 'out of memory'), ('requeued', 'out of memory')$$,
  'each requeue is recorded with the error it clears');
select lives_ok(
  $$insert into public.image_batches (user_id, prompts) values (null, array['from the anon key'])$$,
  'service_role inserts an ownerless batch (anon-key callers of generate-images)');

select * from finish();
rollback;
