// persist: a client made again on the same storage (a reloaded page) resumes the session,
// gets what it missed, and its request refs go on (none is taken for one already answered).

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryStorage, connect, ferrySend, nodeAndListener, until } from './harness.js'

const scene = nodeAndListener()

test('a reloaded page resumes its session and its refs go on', async () => {
  const storage = new MemoryStorage()
  const first = await connect(scene.node.url, { persist: storage })
  await first.send(scene.listener.address, 'one')
  await first.send(scene.listener.address, 'two')
  first.disconnect()
  assert.equal(await ferrySend(first.address, 'missed'), 0)
  const second = await connect(scene.node.url, { persist: storage })
  assert.equal(second.address, first.address)
  assert.equal(second.resumed, true)
  const message = await second.mailbox.receive({ timeout: 10000 })
  assert.equal(message.data, 'missed')
  await second.send(scene.listener.address, 'three')
  assert.ok(await until(() => scene.listener.messages().length >= 3))
  assert.deepEqual(scene.listener.messages().map(m => m.payload), ['one', 'two', 'three'])
  second.close()
})
