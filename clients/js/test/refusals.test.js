// Refusals settle: a request the gateway would refuse for its size is refused here and never
// sent; one the node refuses settles with the node's code and is not sent again; the client's
// own queue is bounded; connect failures are typed and never loop.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import * as Ferry from 'ferry-client'
import { WebSocket, connect, freePort, nodeAndListener, startListener, until } from './harness.js'

const scene = nodeAndListener([
  'max_message_size = 4096',
  'gateway_max_message_size = 4096',
  'gateway_session_ttl = "1s"',
  'gateway_tokens = [{ user = "alice", token = "alice-token" }]',
  'gateway_jwt_hs256_secret = "a secret for the tests of ferry-client"'
].join('\n'))
const options = { WebSocket }

const alice = { ...options, token: 'alice-token' }

/** A WebSocket class that counts the connections it opens. */
function counting () {
  const opened = { count: 0 }
  class Counting extends WebSocket {
    constructor (url) {
      super(url)
      opened.count += 1
    }
  }
  return { Counting, opened }
}

test('too large for the node or the gateway: refused here, and the next send goes out', async () => {
  const client = await connect(scene.node.url, alice)
  const closes = []
  client.on('close', close => closes.push(close.code))
  // A payload over the node's max_message_size, and a frame over the gateway's.
  await assert.rejects(client.send(scene.listener.address, 'x'.repeat(5000)), { code: 'too_large' })
  await assert.rejects(client.send(scene.listener.address, 'x'.repeat(4000)), { code: 'too_large' })
  await assert.rejects(client.send(scene.listener.address, new Uint8Array(4097)), { code: 'too_large' })
  await client.send(scene.listener.address, 'small')
  assert.ok(await until(() => scene.listener.messages().length >= 1))
  assert.deepEqual(scene.listener.messages().map(m => m.payload), ['small'])
  assert.deepEqual(closes, [])
  client.close()
})

test('refused by the node: settled with its code, not sent again', async () => {
  const client = await connect(scene.node.url, alice)
  const nodeId = (await scene.node.child.field('node id: '))
  const listening = (await scene.node.child.field('listening on: '))
  await assert.rejects(client.call(`${nodeId}@${listening}/missing`, 'hi', { timeout: 5000 }),
    { code: 'no_such_service' })
  await assert.rejects(client.send('ferry1garbage', 'x'), { code: 'bad_request' })
  await assert.rejects(client.join('room'), { code: 'forbidden' })
  await client.ping()
  assert.equal(client.state, 'open')
  client.close()
  await assert.rejects(client.send(scene.listener.address, 'late'), { code: 'closed' })
})

test('the client queue is bounded: queue_full, and what was queued goes out', async () => {
  const client = await connect(scene.node.url, { ...alice, maxQueue: 3 })
  client.disconnect()
  const queued = [1, 2, 3].map(n => client.send(scene.listener.address, `queued ${n}`))
  await assert.rejects(client.send(scene.listener.address, 'one too many'), { code: 'queue_full' })
  await client.reconnect()
  await Promise.all(queued)
  assert.ok(await until(() => scene.listener.messages().some(m => m.payload === 'queued 3')))
  const payloads = scene.listener.messages().map(m => m.payload).filter(p => p.startsWith('queued'))
  assert.deepEqual(payloads, ['queued 1', 'queued 2', 'queued 3'])
  client.close()
})

test('a refused token is unauthorized and tried once; getToken may give another', async () => {
  const { Counting, opened } = counting()
  await assert.rejects(Ferry.connect(scene.node.url, { WebSocket: Counting, token: 'wrong' }),
    { code: 'unauthorized' })
  assert.equal(opened.count, 1)
  const again = counting()
  const tokens = ['wrong', 'alice-token']
  const client = await connect(scene.node.url, {
    WebSocket: again.Counting, token: 'stale', getToken: () => tokens.shift()
  })
  assert.equal(client.user, 'alice')
  // 'stale' refused, getToken gave 'wrong' (refused too), then 'alice-token'.
  assert.equal(again.opened.count, 3)
  client.close()
  const same = counting()
  await assert.rejects(Ferry.connect(scene.node.url, {
    WebSocket: same.Counting, token: 'wrong', getToken: () => 'wrong'
  }), { code: 'unauthorized' })
  assert.equal(same.opened.count, 1)
})

test('a page of another origin is forbidden, a gateway that is down unavailable', async () => {
  class Foreign extends WebSocket {
    constructor (url) {
      super(url, { origin: 'http://elsewhere.example' })
    }
  }
  await assert.rejects(Ferry.connect(scene.node.url, { ...alice, WebSocket: Foreign }), { code: 'forbidden' })
  const down = await freePort()
  const started = Date.now()
  await assert.rejects(Ferry.connect(`http://127.0.0.1:${down}`, { ...options, connectTimeout: 1000 }),
    { code: 'unavailable' })
  assert.ok(Date.now() - started >= 1000)
})

test('a session gone when the client comes back: expired, a new address; requests in doubt fail', async () => {
  const gone = await startListener()
  await gone.stop()
  const client = await connect(scene.node.url, alice)
  const first = client.address
  const expired = []
  client.on('expired', change => expired.push(change))
  // Under way on the gateway (its target's node is gone) when the session expires.
  const inDoubt = client.send(gone.address, 'to a node that is gone')
  await client.ping() // answered after the send was read: requests are taken in order
  client.disconnect()
  const notSent = client.send(scene.listener.address, 'made while offline')
  // The session ends once it was away for gateway_session_ttl (1 s).
  const sessions = async () => {
    const metrics = await (await fetch(`http://${await scene.node.child.field('metrics: http://')}`)).text()
    return Number(/^ferry_gateway_sessions (\d+)/m.exec(metrics)[1])
  }
  assert.ok(await until(async () => (await sessions()) === 0))
  await client.reconnect()
  assert.equal(client.expired, true)
  assert.notEqual(client.address, first)
  assert.deepEqual(expired, [{ previous: first, address: client.address }])
  await assert.rejects(inDoubt, { code: 'expired' })
  await notSent
  assert.ok(await until(() => scene.listener.messages().some(m => m.payload === 'made while offline')))
  client.close()
})

/** An HS256 JWT for `sub`, expiring `seconds` from now. */
function jwt (sub, seconds) {
  const part = value => Buffer.from(JSON.stringify(value)).toString('base64url')
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + seconds })}`
  const signature = createHmac('sha256', 'a secret for the tests of ferry-client').update(unsigned).digest('base64url')
  return `${unsigned}.${signature}`
}

test('credentials that expire: refreshed with getToken, else the client stops unauthorized', async () => {
  const refreshed = await connect(scene.node.url, { token: jwt('bob', 2), getToken: () => jwt('bob', 60) })
  const lapsed = await connect(scene.node.url, { token: jwt('carol', 2) })
  const closes = []
  lapsed.on('close', close => closes.push(close.code))
  assert.ok(await until(() => lapsed.state === 'closed', 10000))
  assert.deepEqual(closes, [Ferry.CLOSE.AUTH_EXPIRED])
  assert.equal(lapsed.error.code, 'unauthorized')
  // The refreshed client's first token has expired by now: it is still connected.
  await refreshed.ping()
  assert.equal(refreshed.state, 'open')
  assert.equal(refreshed.user, 'bob')
})
