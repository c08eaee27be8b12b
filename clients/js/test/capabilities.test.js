// Offline attenuation in JS (docs/PROTOCOL.md §4.11) checked against the protocol's vectors,
// proto/vectors/capabilities.json: the same base and caveats give the same tags and the same
// `ferry2` text as the Rust implementation. No node is needed.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as Ferry from 'ferry-client'

const vectors = JSON.parse(readFileSync(new URL('../../../proto/vectors/capabilities.json', import.meta.url)))

function hex (text) {
  return Uint8Array.from(text.match(/../g) || [], byte => parseInt(byte, 16))
}

function base64url (bytes) {
  return Buffer.from(bytes).toString('base64url')
}

function crc32 (bytes) {
  let crc = 0xffffffff
  for (const byte of bytes) {
    crc ^= byte
    for (let k = 0; k < 8; k++) crc = crc & 1 ? 0xedb88320 ^ (crc >>> 1) : crc >>> 1
  }
  return (crc ^ 0xffffffff) >>> 0
}

/** The hints of a vector: its bytes after the capability, before the checksum. */
function hintsOf (vector) {
  const bytes = hex(vector.bytes).subarray(6) // after the binary form's "ferry2"
  const cap = hex(vector.cap).subarray(1) // after the capability field's format byte
  return bytes.subarray(cap.length, bytes.length - 4)
}

/** The address a vector starts from: the `ferry1` address of its grant-0 base, or the
 *  grant's base (`ferry2`, no caveats), with the vector's hints. */
function baseOf (vector) {
  const cap = hex(vector.cap).subarray(1)
  const head = cap.subarray(0, 48) // node, mailbox, expires
  let body
  if (vector.grant === '0000000000000000') {
    body = Buffer.concat([head, hex(vector.base_signature), hintsOf(vector)])
  } else {
    body = Buffer.concat([head, hex(vector.grant), Uint8Array.of(0), hex(vector.base_signature), hintsOf(vector)])
  }
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(body))
  const prefix = vector.grant === '0000000000000000' ? 'ferry1' : 'ferry2'
  return prefix + base64url(Buffer.concat([body, crc]))
}

/** The options of `attenuate` that add the caveat of a vector's step. */
function optionsOf (step) {
  const bytes = hex(step.bytes)
  const value = Buffer.from(bytes.subarray(2))
  switch (bytes[0]) {
    case 0x01: return { expires: Number(value.readBigUInt64BE()) }
    case 0x02: return { max: value.readUInt32BE() }
    case 0x03: return { rate: { messages: value.readUInt32BE(0), per: value.readUInt32BE(4) } }
    case 0x04: return { service: value.toString() }
    case 0x05: return { only: step.caveat.slice('only '.length) }
    default: return null // a caveat kind attenuate does not add
  }
}

test('every vector: the same chain and text as the Rust implementation, one caveat per step', async () => {
  let checked = 0
  for (const vector of vectors.valid) {
    const steps = vector.steps.map(optionsOf)
    if (steps.some(options => options === null)) continue
    let address = baseOf(vector)
    for (const options of steps) address = await Ferry.attenuate(address, options)
    assert.equal(address, vector.text, vector.name)
    assert.equal(address.length, vector.text_len, vector.name)
    checked += 1
  }
  assert.ok(checked >= 4, `only ${checked} vectors checked`)
})

test('several options at once: appended in the order expires, max, rate, service, only', async () => {
  const vector = vectors.valid.find(v => v.name.includes('expires before 1800003600, then only'))
  const only = vector.steps[1].caveat.slice('only '.length)
  const address = await Ferry.attenuate(baseOf(vector), { only, expires: 1800003600 })
  assert.equal(address, vector.text)
  // A Date works as an expiry too.
  const withDate = await Ferry.attenuate(baseOf(vector), { expires: new Date(1800003600 * 1000), only })
  assert.equal(withDate, vector.text)
})

test('an address only narrows: a later expiry, bad options and a ninth caveat are refused', async () => {
  const vector = vectors.valid.find(v => v.name.includes('expires before 1800003600, then only'))
  const narrowed = vector.text // expires before 1800003600
  await assert.rejects(Ferry.attenuate(narrowed, { expires: 1800003600 }), { code: 'bad_request' })
  await assert.rejects(Ferry.attenuate(narrowed, { expires: 1900000000 }), { code: 'bad_request' })
  const earlier = await Ferry.attenuate(narrowed, { expires: 1800000000 })
  assert.ok(earlier.startsWith('ferry2') && earlier.length > narrowed.length)
  await assert.rejects(Ferry.attenuate(narrowed, { max: -1 }), { code: 'bad_request' })
  await assert.rejects(Ferry.attenuate(narrowed, { rate: { messages: 0, per: 60 } }), { code: 'bad_request' })
  await assert.rejects(Ferry.attenuate(narrowed, { service: 'no spaces' }), { code: 'bad_request' })
  await assert.rejects(Ferry.attenuate(narrowed, { only: 'not-a-node-id' }), { code: 'bad_request' })
  await assert.rejects(Ferry.attenuate('ferry1nonsense', { max: 1 }), { code: 'bad_request' })
  // A flipped character fails the checksum.
  const flipped = narrowed.slice(0, 20) + (narrowed[20] === 'A' ? 'B' : 'A') + narrowed.slice(21)
  await assert.rejects(Ferry.attenuate(flipped, { max: 1 }), { code: 'bad_request' })
  // Two caveats there; six more make eight, a ninth is refused.
  let full = narrowed
  for (let i = 0; i < 6; i++) full = await Ferry.attenuate(full, { max: 10 - i })
  await assert.rejects(Ferry.attenuate(full, { max: 1 }), { code: 'bad_request' })
  // No option: the same address.
  assert.equal(await Ferry.attenuate(narrowed, {}), narrowed)
})
