// Node restarts: sends flowing while `ferry run` restarts on the same data directory reach
// the listener once each, in order, after a graceful stop; after a crash (SIGKILL) each at
// least once, in order apart from a run sent again (GATEWAY.md §5.8).

import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, freePort, startListener, startNode, until } from './harness.js'

let listener

before(async () => { listener = await startListener() })
after(async () => { await listener.stop() })

/** The `n`s of the listener's messages tagged `tag`, in order. */
function numbers (tag) {
  return listener.messages()
    .map(m => JSON.parse(m.payload))
    .filter(payload => payload.tag === tag)
    .map(payload => payload.n)
}

/** Sends 300 messages without awaiting each and restarts the node with `signal` once 100
 *  were answered; returns what the listener got. */
async function restartDuringSends (tag, signal) {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-js-restart-'))
  const ports = { gatewayPort: await freePort(), listenPort: await freePort() }
  let node = await startNode({ dataDir: dir, ...ports })
  const client = await connect(node.url)
  const address = client.address
  let answered = 0
  const sends = []
  for (let n = 0; n < 300; n++) {
    sends.push(client.send(listener.address, { tag, n }).then(() => { answered += 1 }))
  }
  assert.ok(await until(() => answered >= 100))
  await node.stop(signal)
  node = await startNode({ dataDir: dir, ...ports })
  await Promise.all(sends)
  await client.send(listener.address, { tag, n: 'end' })
  assert.ok(await until(() => numbers(tag).includes('end'), 30000))
  assert.equal(client.address, address)
  client.close()
  await node.stop()
  rmSync(dir, { recursive: true, force: true })
  return numbers(tag)
}

const range = n => [...Array(n).keys()]

test('a graceful restart of the node: every send once, in order', async () => {
  assert.deepEqual(await restartDuringSends('graceful', 'SIGTERM'), [...range(300), 'end'])
})

test('a crash of the node: every send at least once, in order but for a run sent again', async () => {
  const got = await restartDuringSends('crash', 'SIGKILL')
  // Taking each number at its first arrival gives them all in order; a number seen again is
  // part of one run the client sent again after the crash.
  const first = got.filter((n, i) => got.indexOf(n) === i)
  assert.deepEqual(first, [...range(300), 'end'])
  const again = got.slice(got.findIndex((n, i) => got.indexOf(n) !== i))
  if (got.length > first.length) {
    const start = again[0]
    assert.deepEqual(again, [...range(300).slice(start), 'end'], `got: ${got}`)
  }
})
