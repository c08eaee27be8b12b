// Order is a promise: requests of a session reach each target once, in the order they were
// made, awaited or not, also across rate-limit closes; the client paces itself so that a
// burst does not get it closed.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Ferry from 'ferry-client'
import { connect, nodeAndListener, until } from './harness.js'

const scene = nodeAndListener('gateway_join = ["room"]\ngateway_publish = ["room"]\n')

/** The `n`s the listener printed for messages tagged `tag`, in order. */
function numbers (tag) {
  return scene.listener.messages()
    .map(m => JSON.parse(m.payload))
    .filter(payload => payload.tag === tag)
    .map(payload => payload.n)
}

function range (n) {
  return [...Array(n).keys()]
}

test('1000 sends made at once reach the listener once each, in order, and nothing is closed', async () => {
  const client = await connect(scene.node.url)
  const closes = []
  client.on('close', close => closes.push(close.code))
  const sends = range(1000).map(n => client.send(scene.listener.address, { tag: 'burst', n }))
  await Promise.all(sends)
  await client.send(scene.listener.address, { tag: 'burst', n: 'end' })
  assert.ok(await until(() => numbers('burst').includes('end'), 30000))
  assert.deepEqual(numbers('burst'), [...range(1000), 'end'])
  assert.deepEqual(closes, [])
  client.close()
})

test('sends in flight when the gateway closes for its rate limit are carried out once, in order', async () => {
  const client = await connect(scene.node.url)
  const closes = []
  client.on('close', close => closes.push(close.code))
  const sends = []
  for (let n = 0; n < 400; n++) {
    sends.push(client.send(scene.listener.address, { tag: 'closed', n }))
    // Frames past the rate limit on the client's own socket: the gateway closes it (4029).
    if (n === 200) for (let k = 0; k < 250; k++) client._ws.send('{"type":"ack","id":0}')
  }
  await Promise.all(sends)
  await client.send(scene.listener.address, { tag: 'closed', n: 'end' })
  assert.ok(await until(() => numbers('closed').includes('end'), 30000))
  assert.deepEqual(numbers('closed'), [...range(400), 'end'])
  assert.ok(closes.includes(Ferry.CLOSE.RATE), `closes: ${closes}`)
  client.close()
})

test('publishes not awaited reach every member in the order made', async () => {
  const members = []
  for (let i = 0; i < 3; i++) {
    const member = await connect(scene.node.url)
    member.got = []
    member.mailbox.setHandler(message => { member.got.push(message.data.n) })
    await member.join('room')
    members.push(member)
  }
  await Promise.all(range(200).map(n => members[0].send({ channel: 'room' }, { n })))
  assert.ok(await until(() => members.every(member => member.got.length >= 200)))
  for (const member of members) {
    assert.deepEqual(member.got, range(200))
    member.close()
  }
})
