// The transport: WebTransport when the runtime has it and the node offers it, else WebSocket
// (Node has no WebTransport: a stand-in that never connects shows the fallback), and the
// contiguous cursor that messages arriving out of id order across streams need.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ContiguousIds } from 'ferry-client'
import { connect, nodeAndListener } from './harness.js'

const scene = nodeAndListener('')

test('the cursor moves only over ids all of whose predecessors came', () => {
  const ids = new ContiguousIds(5)
  assert.equal(ids.last(), 4)
  assert.equal(ids.take(7), true)
  assert.equal(ids.last(), 4)
  assert.equal(ids.take(5), true)
  assert.equal(ids.last(), 5)
  assert.equal(ids.take(7), false, 'taken once')
  assert.equal(ids.take(4), false, 'below next')
  assert.equal(ids.take(6), true)
  assert.equal(ids.last(), 7)
  assert.equal(ids.pending, 0)
  ids.take(9)
  ids.rebase(8)
  assert.equal(ids.take(9), false, 'kept across a resume')
  assert.equal(ids.take(8), true)
  assert.equal(ids.last(), 9)
  assert.equal(new ContiguousIds(0).last(), null)
})

test('without WebTransport in the runtime the client uses WebSocket', async () => {
  const client = await connect(scene.node.url)
  assert.equal(client.transport, 'websocket')
  client.close()
})

test('a WebTransport that does not connect falls back to WebSocket within the timeout', async () => {
  let tried = null
  class Stalled {
    constructor (url, options) {
      tried = { url, options }
      this.ready = new Promise(() => {})
      this.closed = new Promise(() => {})
    }

    close () {}
  }
  const started = Date.now()
  const client = await connect(scene.node.url, { WebTransport: Stalled, webTransportTimeout: 500 })
  assert.equal(client.transport, 'websocket')
  assert.ok(Date.now() - started >= 400)
  // It asked for the node's endpoint and pinned its certificate hashes.
  assert.match(tried.url, /^https:\/\/127\.0\.0\.1:\d+\/webtransport/)
  assert.equal(tried.options.serverCertificateHashes.length, 2)
  assert.equal(tried.options.serverCertificateHashes[0].algorithm, 'sha-256')
  assert.equal(tried.options.serverCertificateHashes[0].value.length, 32)
  await client.send(client.address, 'over the fallback')
  const message = await client.mailbox.receive({ timeout: 10000 })
  assert.equal(message.data, 'over the fallback')
  client.close()
})

test('a WebTransport that fails at once falls back at once', async () => {
  class Refused {
    constructor () {
      this.ready = Promise.reject(new Error('refused'))
      this.closed = Promise.reject(new Error('refused'))
      this.ready.catch(() => {})
    }

    close () {}
  }
  const client = await connect(scene.node.url, { WebTransport: Refused, webTransportTimeout: 60000 })
  assert.equal(client.transport, 'websocket')
  client.close()
})

test('data streams need WebTransport: over WebSocket they fail with unsupported', async () => {
  const client = await connect(scene.node.url)
  assert.equal(client.transport, 'websocket')
  await assert.rejects(client.sendData('NODEID/files', 'bytes', { request: { op: 'upload' } }),
    error => error.code === 'unsupported')
  const { readable, done } = client.recvData('NODEID/files')
  await assert.rejects(done, error => error.code === 'unsupported')
  await assert.rejects(readable.getReader().read(), error => error.code === 'unsupported')
  client.disconnect() // and the next connection is a WebSocket too
  await assert.rejects(client.data('NODEID/files').done, error => error.code === 'unsupported')
  client.close()
  await assert.rejects(client.data('NODEID/files').done, error => error.code === 'closed')
})
