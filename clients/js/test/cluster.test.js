// A gateway cluster on NATS (GATEWAY.md §14) with real processes: `nats-server -js` and two
// `ferry run --cluster` nodes, a browser reaching them through a proxy (the load balancer).
// When the browser's node is gone for good, its resume is answered by a new session on the
// other node: ferry.js joins its channels again and recovers each from the last publication it
// had, so the application gets every publication once: in order when nothing is published
// during the rejoin, and without duplicates when publications overlap it.

import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { connect, startNats, startNode, startProxy, until } from './harness.js'

let nats
before(async () => { nats = await startNats() })
after(async () => { await nats.stop() })

const config = url => `cluster = ["${url}"]
cluster_retry_interval = "200ms"
gateway_join = ["room.*"]
gateway_publish = ["room.*"]
`

const portOf = node => Number(new URL(node.url).port)

/** Two cluster nodes and a proxy (the load balancer) in front of the first: `failOver()`
 *  points it at the second, `stop()` ends them all (the first is killed by the test). */
async function twoNodes () {
  const a = await startNode({ config: config(nats.url) })
  const b = await startNode({ config: config(nats.url) })
  const proxy = await startProxy(portOf(a))
  return {
    a,
    b,
    proxy,
    failOver: () => proxy.retarget(portOf(b)),
    stop: async () => {
      proxy.close()
      await b.stop()
      a.remove()
      b.remove()
    }
  }
}

/** A client of `node` that joined `channel`; `publish(from, to)` sends `{n}` for each n. */
async function publisherTo (node, channel) {
  const publisher = await connect(node.url, { transport: 'websocket' })
  await publisher.join(channel)
  const publish = async (from, to) => {
    for (let n = from; n < to; n++) await publisher.send({ channel }, { n })
  }
  return { publisher, publish }
}

test('a node gone for good: ferry.js rejoins its channels and recovers what it missed', async () => {
  const { a, b, proxy, failOver, stop } = await twoNodes()

  const received = []
  const browser = await connect(proxy.url, { transport: 'websocket' })
  browser.mailbox.setHandler(message => { received.push(message.data.n) })
  const events = []
  browser.on('expired', change => events.push(['expired', change]))
  browser.on('rejoined', change => events.push(['rejoined', change]))
  await browser.join('room.1')
  const first = browser.session

  const { publisher, publish } = await publisherTo(b, 'room.1')

  await publish(0, 10)
  assert.ok(await until(() => received.length === 10), `received ${received}`)

  // Node a dies with the browser's session; while the browser is away, 10 more publications.
  await a.stop('SIGKILL')
  await publish(10, 20)
  failOver()

  assert.ok(await until(() => events.some(([kind]) => kind === 'rejoined'), 30000),
    `events: ${JSON.stringify(events)}`)
  assert.notEqual(browser.session, first)
  assert.equal(browser.expired, true)
  const [, rejoined] = events.find(([kind]) => kind === 'rejoined')
  assert.equal(rejoined.address, browser.address)
  assert.equal(rejoined.channels.length, 1)
  assert.equal(rejoined.channels[0].channel, 'room.1')
  assert.equal(rejoined.channels[0].recovered, true)
  // The 10 published while it was away came through the history.
  assert.ok(rejoined.channels[0].count >= 10, `count ${rejoined.channels[0].count}`)
  assert.equal(rejoined.channels[0].error, undefined)

  // Live again on the new session; every publication once, in order.
  await publish(20, 30)
  const all = [...Array(30).keys()]
  assert.ok(await until(() => received.length >= 30), `received ${received}`)
  assert.deepEqual(received, all)
  // Nothing comes late either (a recovered publication arriving twice would).
  await publisher.send({ channel: 'room.1' }, { n: 'end' })
  assert.ok(await until(() => received.includes('end')))
  assert.deepEqual(received, [...all, 'end'])

  await stop()
})

test('publications during the rejoin: both live and recovered, handed over once', async () => {
  const { a, b, proxy, failOver, stop } = await twoNodes()
  const received = []
  const browser = await connect(proxy.url, { transport: 'websocket' })
  browser.mailbox.setHandler(message => { received.push(message.data.n) })
  await browser.join('room.3')
  const { publisher, publish } = await publisherTo(b, 'room.3')
  await publish(0, 5)
  assert.ok(await until(() => received.length === 5), `received ${received}`)
  await a.stop('SIGKILL')
  await publish(5, 10)
  // Publishing goes on while the client rejoins and recovers: whatever is published between
  // its join and its recover comes live and recovered both.
  let publishing = null
  let rejoined = null
  browser.on('expired', () => { publishing = publish(10, 60) })
  browser.on('rejoined', change => { rejoined = change })
  failOver()
  assert.ok(await until(() => rejoined !== null, 30000))
  assert.equal(rejoined.channels[0].recovered, true)
  await publishing
  await publisher.send({ channel: 'room.3' }, { n: 'end' })
  assert.ok(await until(() => received.includes('end'), 30000), `received ${received}`)
  const numbers = received.filter(n => n !== 'end')
  assert.equal(new Set(numbers).size, numbers.length, `a publication came twice: ${received}`)
  assert.deepEqual([...numbers].sort((x, y) => x - y), [...Array(60).keys()])
  await stop()
})

test('without rejoin: the application is told the session changed and nothing is joined', async () => {
  const { a, proxy, failOver, stop } = await twoNodes()
  const browser = await connect(proxy.url, { transport: 'websocket', rejoin: false })
  const events = []
  browser.on('expired', change => events.push('expired'))
  browser.on('rejoined', change => events.push('rejoined'))
  await browser.join('room.2')
  await a.stop('SIGKILL')
  failOver()
  assert.ok(await until(() => events.includes('expired'), 30000))
  // A round trip after the welcome: a rejoin would have been sent before it.
  await browser.ping()
  const members = await browser.presence('room.2')
  assert.deepEqual(members, [])
  assert.deepEqual(events, ['expired'])
  await stop()
})
