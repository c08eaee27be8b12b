// Values across the boundary (GATEWAY.md §3): what a client sends is what the CLI prints,
// what the CLI sends arrives as a string, a JSON value or bytes; addresses compare by their
// mailbox, not their dial hints.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Ferry from 'ferry-client'
import { connect, ferrySend, nodeAndListener, until } from './harness.js'

const scene = nodeAndListener()

/** A client whose messages are kept in `got`. */
async function member () {
  const client = await connect(scene.node.url)
  client.got = []
  client.mailbox.setHandler(message => { client.got.push(message) })
  return client
}

test('strings go as their UTF-8 text, bytes as they are, other values as JSON', async () => {
  const client = await connect(scene.node.url)
  await client.send(scene.listener.address, 'hello')
  await client.send(scene.listener.address, { a: 1 })
  await client.send(scene.listener.address, new Uint8Array([0x68, 0x69]))
  await client.send(scene.listener.address, 42)
  await client.send(scene.listener.address, 'naïve "quoted"')
  assert.ok(await until(() => scene.listener.messages().length >= 5))
  assert.deepEqual(scene.listener.messages().map(m => m.payload),
    ['hello', '{"a":1}', 'hi', '42', 'naïve "quoted"'])
  await client.send(client.config.inbox, 'to the inbox')
  assert.ok(await until(() => scene.node.printed().includes('to the inbox')))
  client.close()
})

test('what the CLI sends arrives as a string or a JSON value; other bytes as bytes', async () => {
  const client = await member()
  assert.equal(await ferrySend(client.address, 'hello'), 0)
  assert.equal(await ferrySend(client.address, '{"a":1}'), 0)
  assert.equal(await ferrySend(client.address, '"quoted"'), 0)
  const other = await connect(scene.node.url)
  await other.send(client.address, new Uint8Array([0xff, 0x00, 0x01]))
  assert.ok(await until(() => client.got.length >= 4))
  assert.deepEqual(client.got.map(m => [m.encoding, m.data, m.binary]), [
    ['text', 'hello', false],
    ['json', { a: 1 }, false],
    ['json', 'quoted', false],
    ['bytes', new Uint8Array([0xff, 0x00, 0x01]), true]
  ])
  client.close()
  other.close()
})

test('sameAddress and addressKey compare the mailbox, whatever the dial hints', async () => {
  const a = await member()
  const b = await member()
  await a.send(b.address, { n: 1 })
  assert.ok(await until(() => b.got.length >= 1))
  const from = b.got[0].from
  assert.notEqual(from, a.address) // `from` carries no dial hints
  assert.equal(Ferry.sameAddress(from, a.address), true)
  assert.equal(Ferry.sameAddress(from, b.address), false)
  assert.equal(Ferry.addressKey(from), Ferry.addressKey(a.address))
  assert.equal(Ferry.sameAddress('ferry1nonsense', a.address), false)
  assert.throws(() => Ferry.addressKey('nonsense'), { code: 'bad_request' })
  // Replying to `from` works.
  await b.send(from, 'back')
  assert.ok(await until(() => a.got.length >= 1))
  assert.equal(a.got[0].data, 'back')
  a.close()
  b.close()
})
