// Capabilities through the gateway against a real `ferry run` (docs/GATEWAY.md §5.9): a session
// narrows its own address in JS, the node enforces the caveats on senders to the session, and
// the session mints and revokes grants; refusals reach the browser as typed FerryError codes.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Ferry from 'ferry-client'
import { connect, ferrySend, nodeAndListener, until } from './harness.js'

const scene = nodeAndListener()

/** Two sessions: `bob` receives, `alice` sends to him. */
async function pair () {
  const alice = await connect(scene.node.url)
  const bob = await connect(scene.node.url)
  const received = []
  bob.mailbox.setHandler(message => { received.push(message.data) })
  return { alice, bob, received }
}

test('at most N messages: the N+1th send is refused with exhausted, also from a peer node', async () => {
  const { alice, bob, received } = await pair()
  const twice = await bob.attenuate({ max: 2 })
  assert.ok(twice.startsWith('ferry2'))
  await alice.send(twice, 'one')
  await alice.send(twice, 'two')
  await assert.rejects(alice.send(twice, 'three'), { code: 'exhausted' })
  // The same counter for a peer node (`ferry send`), and for an address derived further.
  const derived = await Ferry.attenuate(twice, { expires: Math.floor(Date.now() / 1000) + 3600 })
  await assert.rejects(alice.send(derived, 'four'), { code: 'exhausted' })
  // `ferry send` exits 9 (refused).
  assert.equal(await ferrySend(twice, 'five'), 9)
  assert.ok(await until(() => received.length >= 2))
  assert.deepEqual(received, ['one', 'two'])
  // The session's own address is untouched.
  await alice.send(bob.address, 'plain')
  assert.ok(await until(() => received.length === 3))
})

test('only one node, and expiry: refused with caveat and expired', async () => {
  const { alice, bob } = await pair()
  // Handed to another node (seed 2's of the protocol's vectors): refused for the gateway's.
  const elsewhere = await bob.attenuate({ only: 'qe4xodvipulv6vvdkrtmgtd6ztfy3curwtxdpis56yhvxd6jwoka' })
  await assert.rejects(alice.send(elsewhere, 'x'), { code: 'caveat' })
  // Handed to the gateway's own node: the sessions' sends come from it.
  const here = await bob.attenuate({ only: alice.node })
  await alice.send(here, 'allowed')
  const past = await bob.attenuate({ expires: Math.floor(Date.now() / 1000) - 10 })
  await assert.rejects(alice.send(past, 'late'), { code: 'expired' })
})

test('grant and revoke: the granted address works until revoked, then revoked; others stay', async () => {
  const { alice, bob, received } = await pair()
  const first = await bob.grant()
  const second = await bob.grant({ expires: new Date(Date.now() + 3600 * 1000) })
  assert.match(first.grant, /^[0-9a-f]{16}$/)
  assert.ok(first.address.startsWith('ferry2'))
  const narrowed = await Ferry.attenuate(first.address, { max: 10 })
  await alice.send(first.address, 'granted')
  await bob.revoke(first.grant)
  await assert.rejects(alice.send(first.address, 'x'), { code: 'revoked' })
  await assert.rejects(alice.send(narrowed, 'x'), { code: 'revoked' })
  await alice.send(second.address, 'other grant')
  await alice.send(bob.address, 'own address')
  assert.ok(await until(() => received.length >= 3))
  assert.deepEqual(received, ['granted', 'other grant', 'own address'])
  await assert.rejects(bob.revoke('0000000000000000'), { code: 'bad_request' })
  await assert.rejects(bob.revoke('nonsense'), { code: 'bad_request' })
  await assert.rejects(bob.grant({ expires: 1 }), { code: 'bad_request' })
})
