// The HistoryGen frontend's calls, made with the official supabase-js 2.x against the local
// stack (SUPABASE_URL: Storage and Realtime stand-ins) and the app (API_URL: the functions).
// tests/integration/test_supabase_js.py starts both and passes their settings in the environment.
import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import { FunctionsClient } from '@supabase/functions-js'
import { FunctionsHttpError, createClient } from '@supabase/supabase-js'

const env = process.env
const BUCKET = 'generated-assets'
const clients = []

function supabaseAs(token) {
  const client = createClient(env.SUPABASE_URL, env.SUPABASE_ANON_KEY, {
    accessToken: async () => token,
  })
  clients.push(client)
  return client
}

function functionsAs(token) {
  // supabase.functions, with the app's base URL: the frontend's one change
  return new FunctionsClient(`${env.API_URL}/functions/v1`, {
    headers: { Authorization: `Bearer ${token}`, apikey: env.SUPABASE_ANON_KEY },
  })
}

after(async () => {
  for (const client of clients) await client.removeAllChannels()
})

test('generate-images answers 202 with the batch id when not waiting', async () => {
  const { data, error } = await functionsAs(env.USER_A_TOKEN).invoke('generate-images', {
    body: { prompts: ['The Magna Carta, 1215'], wait: false },
  })
  assert.equal(error, null)
  assert.match(data.batch_id, /^[0-9a-f-]{36}$/)
})

test('generate-images answers the finished batch when waiting', async () => {
  const { data, error } = await functionsAs(env.USER_A_TOKEN).invoke('generate-images', {
    body: { prompts: ['A Roman aqueduct', 'A Greek trireme'], aspectRatio: '1:1' },
  })
  assert.equal(error, null)
  assert.equal(data.success, true)
  assert.equal(data.total, 2)
  assert.equal(data.images.length, 2)
  const image = await fetch(data.images[0])
  assert.equal(image.status, 200)
  assert.equal(image.headers.get('content-type'), 'image/png')
})

test('generate-images streams the progress as server-sent events', async () => {
  const { data, error } = await functionsAs(env.USER_A_TOKEN).invoke('generate-images', {
    body: { prompts: ['The Library of Alexandria'], stream: true },
  })
  assert.equal(error, null)
  assert.ok(data instanceof Response, 'an event stream is handed over as the Response')
  const text = await data.text()
  const events = text
    .split('\n\n')
    .map((block) => block.split('\n')[0])
    .filter((line) => line.startsWith('data: '))
    .map((line) => JSON.parse(line.slice('data: '.length)))
  assert.equal(events[0].type, 'progress')
  assert.equal(events.at(-1).type, 'complete')
  assert.equal(events.at(-1).success, true)
})

test('errors are FunctionsHttpError with a JSON body naming the field', async () => {
  const functions = functionsAs(env.USER_A_TOKEN)
  const bad = await functions.invoke('generate-images', { body: { prompts: ['\u00a0'] } })
  assert.ok(bad.error instanceof FunctionsHttpError)
  assert.equal(bad.error.context.status, 400)
  assert.deepEqual(await bad.error.context.json(), {
    success: false,
    error: 'prompts[0]: prompt is empty or blank',
  })
  const missing = await functions.invoke('no-such-function', { body: {} })
  assert.ok(missing.error instanceof FunctionsHttpError)
  assert.equal(missing.error.context.status, 404)
  assert.equal((await missing.error.context.json()).success, false)
  const anonymous = await functionsAs('not-a-token').invoke('generate-images', { body: { prompts: ['x'] } })
  assert.ok(anonymous.error instanceof FunctionsHttpError)
  assert.equal(anonymous.error.context.status, 401)
})

test('postgres_changes with default settings: a user sees their own rows only', async () => {
  const supabase = supabaseAs(env.USER_A_TOKEN)
  // as a signed-in page has its session before it subscribes (otherwise the join goes out as anon)
  await supabase.realtime.setAuth(env.USER_A_TOKEN)
  const received = []
  const subscribed = new Promise((resolve, reject) => {
    supabase
      .channel('my-batches')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'image_batches' }, (change) =>
        received.push(change),
      )
      .subscribe((status, err) => {
        if (status === 'SUBSCRIBED') resolve()
        else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') reject(err ?? new Error(status))
      })
  })
  await subscribed
  const theirs = await functionsAs(env.USER_B_TOKEN).invoke('generate-images', {
    body: { prompts: ["B's image"], wait: false },
  })
  const mine = await functionsAs(env.USER_A_TOKEN).invoke('generate-images', {
    body: { prompts: ["A's image"], wait: false },
  })
  assert.equal(theirs.error, null)
  const deadline = Date.now() + 5000
  while (!received.some((c) => c.new.id === mine.data.batch_id) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  assert.deepEqual(
    received.map((change) => change.new.id),
    [mine.data.batch_id],
  )
  assert.equal(received[0].eventType, 'INSERT')
  assert.equal(received[0].new.user_id, env.USER_A_ID)
})

test('storage: public URLs for everyone, nothing through the authenticated routes but for the service role', async () => {
  const made = await functionsAs(env.USER_A_TOKEN).invoke('generate-images', {
    body: { prompts: ['The Rosetta Stone'] },
  })
  const path = new URL(made.data.images[0]).pathname.split(`/public/${BUCKET}/`)[1]
  const user = supabaseAs(env.USER_A_TOKEN).storage.from(BUCKET)
  const { data: link } = user.getPublicUrl(path)
  assert.equal(link.publicUrl, made.data.images[0])
  assert.equal((await fetch(link.publicUrl)).status, 200)
  // no storage.objects policy: a user's key reads nothing through the authenticated routes
  const refused = await user.download(path)
  assert.notEqual(refused.error, null)
  const listed = await user.list('generated-images')
  assert.deepEqual(listed.data, [])
  assert.notEqual((await user.createSignedUrl(path, 60)).error, null)

  const service = supabaseAs(env.SUPABASE_SERVICE_ROLE_KEY).storage.from(BUCKET)
  const downloaded = await service.download(path)
  assert.equal(downloaded.error, null)
  assert.ok(downloaded.data.size > 0)
  const { data: signed, error } = await service.createSignedUrl(path, 60)
  assert.equal(error, null)
  const fetched = await fetch(signed.signedUrl)
  assert.equal(fetched.status, 200)
  assert.equal((await fetched.arrayBuffer()).byteLength, downloaded.data.size)
})
