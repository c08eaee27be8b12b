// Liveness: a connection that goes silent without closing (a proxy that stops forwarding) is
// given up after the heartbeat timeout, and the client resumes on a new one.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { connect, ferrySend, nodeAndListener, startProxy, until } from './harness.js'

const scene = nodeAndListener('gateway_ping_interval = "200ms"\n')

test('a silent connection is noticed and the session resumed', async (t) => {
  const proxy = await startProxy(Number(new URL(scene.node.url).port))
  t.after(() => proxy.close())
  const client = await connect(proxy.url, { heartbeatTimeout: 1000 })
  assert.equal(client.limits.ping_interval_ms, 200)
  const got = []
  const states = []
  client.mailbox.setHandler(message => { got.push(message.data) })
  client.on('state', state => states.push(state))
  proxy.freeze()
  const sent = client.send(scene.listener.address, 'during the silence')
  assert.equal(await ferrySend(client.address, 'while silent'), 0)
  assert.ok(await until(() => got.length >= 1, 10000), `states: ${states}`)
  await sent
  assert.deepEqual(got, ['while silent'])
  assert.ok(states.includes('connecting'), `states: ${states}`)
  assert.equal(client.state, 'open')
  assert.equal(client.resumed, true)
  await client.send(scene.listener.address, 'end')
  assert.ok(await until(() => scene.listener.messages().some(m => m.payload === 'end')))
  assert.deepEqual(scene.listener.messages().map(m => m.payload), ['during the silence', 'end'])
  client.close()
})
