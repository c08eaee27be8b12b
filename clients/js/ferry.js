// ferry.js: the client of the ferry gateway, for browsers and Node. One ES module, no
// dependencies, no build step; the gateway serves this very file at /ferry.js (types at
// /ferry.d.ts), and it is the npm package `ferry-client`.
//
//   import * as Ferry from '/ferry.js'
//   const client = await Ferry.connect(location.origin, {token})
//   client.address                          // this session's capability address
//   client.mailbox.setHandler(m => …)       // or: await client.mailbox.receive({timeout})
//   await client.send(address, {any: 'json'})
//   const reply = await client.call(service, 'text', {timeout: 5000})
//   await client.join('room.1'); await client.send({channel: 'room.1'}, 'hi')
//
// The wire protocol is docs/GATEWAY.md; what this client promises is §11 there and the
// package's README. In short: the requests of a session reach each target once, in the order
// they were made, whatever happens to connections (requests carry increasing refs, the
// gateway's journal recognises one sent again); the client paces itself within the gateway's
// rate limit and never sends what the gateway would refuse for its size; it notices a silent
// connection (heartbeats) and the browser going offline, and resumes its session.

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** An error with a stable `code`: the gateway's error codes and the client's own. */
export class FerryError extends Error {
  constructor (code, message) {
    super(message || code)
    this.name = 'FerryError'
    this.code = code
  }
}

/** The gateway's close codes (docs/GATEWAY.md §8). */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  TOO_BIG: 1009,
  IDLE: 4000,
  AGE: 4001,
  AUTH_EXPIRED: 4002,
  ENDED: 4003,
  SLOW: 4008,
  RATE: 4029,
  PROTOCOL: 4400,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
  TAKEN_OVER: 4409
})

/** Close codes after which the client stops for good, and the error it reports. */
const FINAL = new Map([
  [CLOSE.ENDED, 'ended'],
  [CLOSE.PROTOCOL, 'protocol'],
  [CLOSE.FORBIDDEN, 'forbidden'],
  [CLOSE.TAKEN_OVER, 'taken_over']
])

/** Offsets of one channel remembered after a session change, to drop publications that come
 *  both live and recovered (at most `cluster_recover_max`, 10,000 by default, are recovered). */
const SEEN_MAX = 20000
const BACKOFF_MIN_MS = 250
const BACKOFF_MAX_MS = 10000
/** How long a session's state is kept between acks (ms). */
const ACK_DELAY_MS = 50
/** Refs reserved in the persisted state at once (a reloaded page starts above them). */
const REF_BLOCK = 1024

function wsUrl (url) {
  const here = typeof location !== 'undefined' ? location : undefined
  const parsed = new URL(url || (here ? here.origin : ''), here ? here.href : undefined)
  if (parsed.protocol === 'http:') parsed.protocol = 'ws:'
  if (parsed.protocol === 'https:') parsed.protocol = 'wss:'
  if (parsed.pathname === '/' || parsed.pathname === '') parsed.pathname = '/ws'
  return parsed
}

// --- values -------------------------------------------------------------------------------

function isBytes (value) {
  return value instanceof ArrayBuffer || ArrayBuffer.isView(value)
}

function bytesOf (value) {
  if (value instanceof ArrayBuffer) return new Uint8Array(value)
  return new Uint8Array(value.buffer, value.byteOffset, value.byteLength)
}

/** Bytes of `text` in UTF-8, without encoding it. */
function utf8Length (text) {
  let length = text.length
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code >= 0x80) length += code >= 0x800 && (code < 0xd800 || code > 0xdfff) ? 2 : 1
  }
  return length
}

/** A payload as it goes on the wire (docs/GATEWAY.md §3): a string as its UTF-8 text, bytes
 *  as they are, any other value as its JSON text. */
function payloadOf (value) {
  if (typeof value === 'string') return { text: value, size: utf8Length(value) }
  if (isBytes(value)) {
    const bytes = bytesOf(value)
    return { bytes, size: bytes.length }
  }
  let json
  try {
    json = JSON.stringify(value)
  } catch (error) {
    throw new FerryError('bad_request', `a message must be JSON, text or bytes: ${error.message}`)
  }
  if (json === undefined) throw new FerryError('bad_request', `a message cannot be ${typeof value}`)
  return { json, size: utf8Length(json) }
}

/** A request frame: the fields, and the payload if any. Its size in bytes is `size`. */
function requestFrame (fields, payload) {
  if (payload && payload.bytes) {
    const header = encoder.encode(JSON.stringify(fields))
    const out = new Uint8Array(4 + header.length + payload.bytes.length)
    new DataView(out.buffer).setUint32(0, header.length)
    out.set(header, 4)
    out.set(payload.bytes, 4 + header.length)
    return { frame: out.buffer, size: out.length }
  }
  let text
  if (payload && payload.json !== undefined) {
    const head = JSON.stringify(fields)
    text = head.slice(0, -1) + ',"data":' + payload.json + '}'
  } else if (payload) {
    text = JSON.stringify({ ...fields, text: true, data: payload.text })
  } else {
    text = JSON.stringify(fields)
  }
  return { frame: text, size: utf8Length(text) }
}

/** A frame from the gateway; `encoding` says what its `data` is: 'json' (a value), 'text'
 *  (a string), or 'bytes' (a Uint8Array). */
function readFrame (data) {
  if (typeof data === 'string') {
    const frame = JSON.parse(data)
    frame.encoding = frame.text === true ? 'text' : 'json'
    return frame
  }
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : bytesOf(data)
  const length = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0)
  const frame = JSON.parse(decoder.decode(bytes.subarray(4, 4 + length)))
  frame.data = bytes.slice(4 + length)
  frame.encoding = 'bytes'
  return frame
}

// --- message ids --------------------------------------------------------------------------

/** Message ids of a session, taken in any order, with the last id up to which every id was
 *  taken (GATEWAY.md §13.6): over WebTransport the messages of different sources come on
 *  different streams, so ids arrive out of order; the cursor (and the ack) only moves over
 *  ids all of whose predecessors were taken too. */
export class ContiguousIds {
  /** `next`: the first id to expect (the welcome's `next`). */
  constructor (next = 0) {
    this.reset(next)
  }

  /** Expects `next` first; forgets every id taken. */
  reset (next) {
    this.next = next
    this._above = new Set()
  }

  /** Expects `next` first, keeping the ids taken at or above it (a resumed session goes on
   *  from `next`: ids taken above it before are not taken twice). */
  rebase (next) {
    for (const id of this._above) if (id < next) this._above.delete(id)
    this.next = next
    while (this._above.delete(this.next)) this.next++
  }

  /** Takes `id`: true if it is new (not below `next`, not taken before). */
  take (id) {
    if (id < this.next || this._above.has(id)) return false
    this._above.add(id)
    while (this._above.delete(this.next)) this.next++
    return true
  }

  /** The last id up to which every id was taken, or null if none. */
  last () {
    return this.next > 0 ? this.next - 1 : null
  }

  /** Ids taken above the contiguous run. */
  get pending () {
    return this._above.size
  }
}

// --- WebTransport --------------------------------------------------------------------------

/** Stream types and frame kinds of the WebTransport mapping (GATEWAY.md §13). */
const WT_CONTROL = 0x00
const WT_REQUESTS = 0x01
const WT_DELIVERIES = 0x02
const WT_TEXT = 0x00
const WT_BINARY = 0x01
/** Request streams a client keeps open at once (the gateway allows 100); the least recently
 *  used is finished beyond. */
const WT_MAX_LANES = 64

/** One frame on a stream: kind, u32 big-endian length, bytes. */
function wtEncode (frame) {
  const text = typeof frame === 'string'
  const body = text ? encoder.encode(frame) : bytesOf(frame)
  const out = new Uint8Array(5 + body.length)
  out[0] = text ? WT_TEXT : WT_BINARY
  new DataView(out.buffer).setUint32(1, body.length)
  out.set(body, 5)
  return out
}

/** Reads frames from a stream's reader, handing each (string or ArrayBuffer) to `onFrame`;
 *  `skipType`: the stream's first byte is read (and checked) first. */
async function wtReadFrames (readable, onFrame, skipType) {
  const reader = readable.getReader()
  let buffer = new Uint8Array(0)
  let typeRead = skipType === undefined
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    const joined = new Uint8Array(buffer.length + value.length)
    joined.set(buffer)
    joined.set(value, buffer.length)
    buffer = joined
    if (!typeRead) {
      if (buffer[0] !== skipType) throw new Error(`unexpected stream type ${buffer[0]}`)
      buffer = buffer.subarray(1)
      typeRead = true
    }
    while (buffer.length >= 5) {
      const length = new DataView(buffer.buffer, buffer.byteOffset, 5).getUint32(1)
      if (buffer.length < 5 + length) break
      const body = buffer.slice(5, 5 + length)
      const kind = buffer[0]
      buffer = buffer.subarray(5 + length)
      onFrame(kind === WT_TEXT ? decoder.decode(body) : body.buffer)
    }
  }
}

/** A WebTransport session that looks like a WebSocket to the client (`send`, `close`,
 *  `onmessage`, `onclose`), with its streams (GATEWAY.md §13): requests go on a stream per
 *  target (sends) or per call, the rest on the control stream; messages come on the
 *  gateway's delivery streams. */
/** How long a session whose control stream failed waits for its close code (ms). */
const CONTROL_FAILED_GRACE_MS = 2000

class WebTransportSocket {
  constructor (WebTransportClass, url, hashes) {
    const options = {}
    if (hashes.length > 0) {
      options.serverCertificateHashes = hashes.map(h => ({
        algorithm: h.algorithm,
        value: Uint8Array.from(atob(h.value), c => c.charCodeAt(0))
      }))
    }
    this.onmessage = null
    this.onclose = null
    this.onerror = null
    this._closed = false
    this._lanes = new Map() // lane key → {writer, chain}
    this._wt = new WebTransportClass(url, options)
    this._wt.closed.then(
      info => this._end((info && info.closeCode) || CLOSE.ABNORMAL, (info && info.reason) || ''),
      error => this._end(CLOSE.ABNORMAL, String(error && error.message ? error.message : error)))
    this._control = this._wt.ready.then(async () => {
      const stream = await this._wt.createBidirectionalStream()
      const writer = stream.writable.getWriter()
      await writer.write(new Uint8Array([WT_CONTROL]))
      this._read(stream.readable)
      this._acceptDeliveries()
      this._acceptIncoming()
      return writer
    })
    // A control stream that could not be opened ends the session. The gateway's refusal
    // (4401, 4403) stops the stream before its close capsule is read: `closed` is given
    // time to bring the code, which closing at once would replace with 1006.
    this._control.catch(() => {
      const grace = new Promise(resolve => setTimeout(resolve, CONTROL_FAILED_GRACE_MS))
      Promise.race([this._wt.closed, grace]).catch(() => {}).then(() => {
        try { this._wt.close() } catch (_) {}
      })
    })
  }

  _frame (data) {
    if (!this._closed && this.onmessage) this.onmessage({ data })
  }

  _read (readable, type) {
    wtReadFrames(readable, data => this._frame(data), type).catch(() => {})
  }

  async _acceptDeliveries () {
    const reader = this._wt.incomingUnidirectionalStreams.getReader()
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }))
      if (done) return
      this._read(value, WT_DELIVERIES)
    }
  }

  /** Peers' data for the session (GATEWAY.md §13.12): streams the gateway opens. */
  async _acceptIncoming () {
    const reader = this._wt.incomingBidirectionalStreams.getReader()
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }))
      if (done) return
      if (this.ondata) this.ondata(value)
      else value.readable.cancel().catch(() => {})
    }
  }

  /** Sends `frame` on the control stream, or on the stream of `lane` (opened at its first
   *  frame, finished when `last`). */
  send (frame, lane, last) {
    if (this._closed) throw new Error('closed')
    const bytes = wtEncode(frame)
    if (!lane) {
      this._control.then(writer => writer.write(bytes)).catch(() => {})
      return
    }
    let entry = this._lanes.get(lane)
    if (entry) {
      this._lanes.delete(lane) // re-inserted: the map is in order of use
    } else {
      entry = {
        chain: this._control.then(async () => {
          const stream = await this._wt.createBidirectionalStream()
          this._read(stream.readable, undefined)
          const writer = stream.writable.getWriter()
          await writer.write(new Uint8Array([WT_REQUESTS]))
          return writer
        })
      }
      entry.writer = entry.chain
    }
    entry.chain = entry.chain.then(async (writer) => { await writer.write(bytes); return writer })
    if (last) {
      entry.chain.then(writer => writer.close()).catch(() => {})
      return
    }
    this._lanes.set(lane, entry)
    if (this._lanes.size > WT_MAX_LANES) {
      const [oldest, old] = this._lanes.entries().next().value
      this._lanes.delete(oldest)
      old.chain.then(writer => writer.close()).catch(() => {})
    }
    entry.chain.catch(() => {})
  }

  close (code = CLOSE.NORMAL, reason = '') {
    try { this._wt.close({ closeCode: code, reason }) } catch (_) {}
    this._end(code, reason)
  }

  _end (code, reason) {
    if (this._closed) return
    this._closed = true
    if (this.onclose) this.onclose({ code, reason })
  }
}

// --- data streams (GATEWAY.md §13.11) ------------------------------------------------------

const WT_DATA = 0x03
const WT_PIECE = 0x02
const WT_DATA_PIECE = 64 * 1024

/** An upload's body as a ReadableStream of bytes, with its size when known. */
function bodyStream (body) {
  if (body === undefined || body === null) return { stream: null, total: 0 }
  if (typeof ReadableStream !== 'undefined' && body instanceof ReadableStream) return { stream: body, total: undefined }
  if (typeof Blob !== 'undefined' && body instanceof Blob) return { stream: body.stream(), total: body.size }
  const bytes = typeof body === 'string' ? encoder.encode(body) : isBytes(body) ? bytesOf(body) : null
  if (bytes === null) {
    throw new FerryError('bad_request', 'a data body is a Blob, a ReadableStream, bytes or a string')
  }
  const stream = new ReadableStream({
    start (controller) {
      if (bytes.length > 0) controller.enqueue(bytes)
      controller.close()
    }
  })
  return { stream, total: bytes.length }
}

/** One data stream on WebTransport session `wt`: writes the header frame and the body, and
 *  reads the service's data into `readable` and the answer into `done`. */
function dataStream (wt, header, body, onProgress, signal) {
  const { stream: source, total } = bodyStream(body)
  const state = { sent: 0, received: 0, uploadError: null, over: false }
  let settle
  const done = new Promise((resolve, reject) => { settle = { resolve, reject } })
  done.catch(() => {}) // a page that only reads `readable` sees the error there
  const progress = () => {
    if (!onProgress) return
    try { onProgress({ sent: state.sent, received: state.received, total }) } catch (_) {}
  }
  const opened = (async () => {
    const stream = await wt.createBidirectionalStream()
    const writer = stream.writable.getWriter()
    const head = wtEncode(header)
    const first = new Uint8Array(1 + head.length)
    first[0] = WT_DATA
    first.set(head, 1)
    await writer.write(first)
    upload(writer).catch(() => {})
    return { writer, reader: stream.readable.getReader() }
  })()
  opened.catch(() => {})
  // The body, one chunk at a time: each write waits for the stream to take it (QUIC flow
  // control is the backpressure), then FIN.
  async function upload (writer) {
    try {
      if (source) {
        const reader = source.getReader()
        for (;;) {
          const { value, done: end } = await reader.read()
          if (end) break
          if (state.over) { reader.cancel().catch(() => {}); return }
          const bytes = value instanceof Uint8Array ? value : bytesOf(value)
          // In pieces of 64 KiB: progress as the network takes them (a Blob's stream
          // may hand over megabytes at once).
          for (let at = 0; at < bytes.length; at += WT_DATA_PIECE) {
            const piece = bytes.subarray(at, at + WT_DATA_PIECE)
            await writer.ready
            await writer.write(piece)
            state.sent += piece.length
            progress()
          }
        }
      }
      await writer.close()
    } catch (error) {
      // The gateway answered early (and stopped reading), or the body failed: the answer,
      // or the reset, comes on the other side.
      if (!state.over) {
        state.uploadError = error
        writer.abort(error).catch(() => {})
      }
    }
  }
  const fail = (error) => {
    if (state.over) return error
    state.over = true
    settle.reject(error)
    opened.then(({ writer, reader }) => {
      writer.abort(error).catch(() => {})
      reader.cancel(error).catch(() => {})
    }).catch(() => {})
    return error
  }
  let buffer = new Uint8Array(0)
  const readable = new ReadableStream({
    async pull (controller) {
      let parts
      try {
        parts = await opened
      } catch (error) {
        controller.error(fail(new FerryError('interrupted', `the data stream could not be opened: ${error}`)))
        return
      }
      for (;;) {
        while (buffer.length >= 5) {
          const kind = buffer[0]
          const length = new DataView(buffer.buffer, buffer.byteOffset, 5).getUint32(1)
          if (buffer.length < 5 + length) break
          const piece = buffer.slice(5, 5 + length)
          buffer = buffer.subarray(5 + length)
          if (kind === WT_PIECE) {
            state.received += length
            progress()
            controller.enqueue(piece)
            return
          }
          const frame = readFrame(kind === WT_TEXT ? decoder.decode(piece) : piece.buffer)
          if (frame.type === 'ok') {
            state.over = true
            controller.close()
            settle.resolve({ reply: frame.data, encoding: frame.encoding, sent: frame.sent, received: frame.received })
          } else {
            controller.error(fail(new FerryError(frame.code || 'internal', frame.message)))
          }
          parts.reader.cancel().catch(() => {})
          return
        }
        let next
        try {
          next = await parts.reader.read()
        } catch (error) {
          next = { done: true, error }
        }
        if (next.done) {
          const why = state.uploadError || next.error
          const error = why instanceof FerryError
            ? why
            : new FerryError('interrupted', `the data stream broke before its answer${why ? `: ${why}` : ''}`)
          controller.error(fail(error))
          return
        }
        const joined = new Uint8Array(buffer.length + next.value.length)
        joined.set(buffer)
        joined.set(next.value, buffer.length)
        buffer = joined
      }
    },
    cancel (reason) {
      fail(new FerryError('cancelled', `the download was cancelled${reason ? `: ${reason}` : ''}`))
    }
  })
  if (signal) {
    const abort = () => {
      const error = fail(new FerryError('cancelled', 'aborted'))
      readable.cancel(error).catch(() => {})
    }
    if (signal.aborted) abort()
    else signal.addEventListener('abort', abort, { once: true })
  }
  return { readable, done }
}

const WT_INCOMING = 0x04

/** A peer's data for the session on a stream the gateway opened (GATEWAY.md §13.12): its
 *  header, then raw bytes to the FIN; `handler(meta, readable)` reads them and its result is
 *  the answer, one frame on the stream's other side. */
async function incomingData (stream, handler) {
  const reader = stream.readable.getReader()
  const writer = stream.writable.getWriter()
  let buffer = new Uint8Array(0)
  const more = async () => {
    const { value, done } = await reader.read()
    if (done) throw new FerryError('interrupted', 'the data stream ended inside its header')
    const joined = new Uint8Array(buffer.length + value.length)
    joined.set(buffer)
    joined.set(value, buffer.length)
    buffer = joined
  }
  while (buffer.length < 6) await more()
  if (buffer[0] !== WT_INCOMING) throw new FerryError('protocol', `unexpected stream type ${buffer[0]}`)
  const length = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength).getUint32(2)
  while (buffer.length < 6 + length) await more()
  const body = buffer.slice(6, 6 + length)
  const header = readFrame(buffer[1] === WT_TEXT ? decoder.decode(body) : body.buffer)
  const rest = buffer.slice(6 + length)
  const readable = new ReadableStream({
    start (controller) {
      if (rest.length > 0) controller.enqueue(rest)
    },
    async pull (controller) {
      try {
        const { value, done } = await reader.read()
        if (done) controller.close()
        else controller.enqueue(value)
      } catch (error) {
        controller.error(new FerryError('interrupted', `the sender's data broke off: ${error}`))
      }
    },
    cancel (reason) { return reader.cancel(reason) }
  })
  const meta = { from: header.from, data: header.data, encoding: header.encoding }
  let answer
  try {
    if (!handler) throw new Error('no data handler (client.onData)')
    const reply = await handler(meta, readable)
    const payload = reply === undefined ? undefined : payloadOf(reply)
    if (payload && payload.bytes) throw new Error('a data answer is JSON or text, not bytes')
    answer = requestFrame({ type: 'ok' }, payload).frame
  } catch (error) {
    readable.cancel().catch(() => {})
    answer = JSON.stringify({ type: 'error', message: String((error && error.message) || error) })
  }
  await writer.write(wtEncode(answer))
  await writer.close()
}

/** The lane of a request over WebTransport: a send's target, a call of its own (`last`: the
 *  stream is finished after it), or the control stream (null). */
function laneOf (fields) {
  if (fields.type === 'send') {
    let key
    try { key = addressKey(fields.to) } catch (_) { key = JSON.stringify(fields.to) }
    return { lane: 'to:' + key, last: false }
  }
  if (fields.type === 'call') return { lane: 'call:' + fields.ref, last: true }
  return { lane: null, last: false }
}

// --- addresses ----------------------------------------------------------------------------

/** The 112-byte core of a capability address (docs/PROTOCOL.md §4), or null. */
function addressCore (address) {
  if (typeof address !== 'string' || !address.startsWith('ferry1')) return null
  const body = address.slice(6)
  if (body.length < 155 || body.length > 507 || !/^[A-Za-z0-9_-]+$/.test(body)) return null
  let binary
  try {
    const base64 = body.replace(/-/g, '+').replace(/_/g, '/')
    binary = atob(base64 + '='.repeat((4 - base64.length % 4) % 4))
  } catch (_) {
    return null
  }
  if (binary.length < 116) return null
  const core = new Uint8Array(112)
  for (let i = 0; i < 112; i++) core[i] = binary.charCodeAt(i)
  return core
}

/** Whether two addresses name the same mailbox (the same node, mailbox, expiry and
 *  signature), whatever dial hints they carry: a message's `from` lacks the sender's hints. */
export function sameAddress (a, b) {
  const x = addressCore(a)
  const y = addressCore(b)
  return x !== null && y !== null && x.every((byte, i) => byte === y[i])
}

/** A string that is equal for addresses of the same mailbox (see `sameAddress`): a key for
 *  maps. Throws FerryError('bad_request') for a string that is no address. */
export function addressKey (address) {
  const core = addressCore(address)
  if (core === null) throw new FerryError('bad_request', 'not a ferry address')
  return String.fromCharCode(...core)
}

// --- pacing -------------------------------------------------------------------------------

/** A token bucket kept inside the gateway's (`rate_limit` frames per `rate_window_ms`): half
 *  its burst and nine tenths of its rate, so that frames bunched on the way still fit. */
class Pacer {
  constructor () {
    this.configure(1, 1000)
  }

  configure (limit, windowMs) {
    this.capacity = Math.max(1, Math.floor(limit / 2))
    this.perMs = (0.9 * limit) / Math.max(1, windowMs)
    this.tokens = this.capacity
    this.last = Date.now()
  }

  _refill () {
    const now = Date.now()
    this.tokens = Math.min(this.capacity, this.tokens + (now - this.last) * this.perMs)
    this.last = now
  }

  take () {
    this._refill()
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  /** Milliseconds until a token is there. */
  wait () {
    this._refill()
    return Math.max(1, Math.ceil((1 - this.tokens) / this.perMs))
  }
}

// --- the mailbox --------------------------------------------------------------------------

/** A session's mailbox: `receive` or `setHandler`, one or the other. */
class Mailbox {
  constructor (client) {
    this._client = client
    this._handler = null
    this._buffer = []
    this._waiters = []
  }

  /** Resolves with the next message; rejects with FerryError('timeout') after `timeout` ms. */
  receive ({ timeout } = {}) {
    if (this._handler) {
      return Promise.reject(new FerryError('mailbox_has_handler',
        'this mailbox has a handler (setHandler): receive() cannot be used as well'))
    }
    const message = this._buffer.shift()
    if (message) {
      this._client._processed(message)
      return Promise.resolve(message)
    }
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null }
      if (timeout !== undefined && timeout !== null) {
        waiter.timer = setTimeout(() => {
          this._waiters = this._waiters.filter(w => w !== waiter)
          reject(new FerryError('timeout', `no message within ${timeout} ms`))
        }, timeout)
      }
      this._waiters.push(waiter)
    })
  }

  /** Calls `handler(message)` for every message, in order (awaiting a returned promise). */
  setHandler (handler) {
    if (typeof handler !== 'function') throw new TypeError('setHandler needs a function')
    if (this._handler) throw new FerryError('mailbox_has_handler', 'this mailbox already has a handler')
    if (this._waiters.length > 0) {
      throw new FerryError('mailbox_receiving',
        'receive() is waiting on this mailbox: setHandler cannot be used as well')
    }
    this._handler = handler
    this._chain = Promise.resolve()
    const buffered = this._buffer
    this._buffer = []
    for (const message of buffered) this._run(message)
  }

  _run (message) {
    this._chain = this._chain.then(async () => {
      try {
        await this._handler(message)
      } catch (error) {
        console.error('ferry: message handler failed', error)
      }
      this._client._processed(message)
    })
  }

  _deliver (message) {
    if (this._handler) return this._run(message)
    const waiter = this._waiters.shift()
    if (waiter) {
      if (waiter.timer) clearTimeout(waiter.timer)
      this._client._processed(message)
      waiter.resolve(message)
      return
    }
    this._buffer.push(message)
  }
}

// --- the client ---------------------------------------------------------------------------

/** A client of one session: connected, or reconnecting. Made by `connect`. */
export class Client {
  constructor (url, options = {}) {
    this._url = wsUrl(url)
    this._options = options
    this._WebSocket = options.WebSocket || globalThis.WebSocket
    if (typeof this._WebSocket !== 'function') {
      throw new FerryError('no_websocket',
        'no WebSocket: pass one as the WebSocket option (e.g. from the ws package)')
    }
    this._WebTransport = options.WebTransport !== undefined ? options.WebTransport : globalThis.WebTransport
    this._webTransportTimeout = options.webTransportTimeout ?? 3000
    this._wtFailed = options.transport === 'websocket'
    // Called as a plain function: a browser's fetch throws "Illegal invocation" when called
    // as a method of another object (this._fetch(…)).
    this._fetch = options.fetch ||
      (typeof globalThis.fetch === 'function' ? (...args) => globalThis.fetch(...args) : null)
    this.transport = null
    this._dataHandler = null
    this._ids = new ContiguousIds(0) // ids received: `_received` is its last()
    this._done = new ContiguousIds(0) // ids processed: `_cursor` is its last()
    this._token = options.token
    this._maxQueue = options.maxQueue ?? 10000
    this._connectTimeout = options.connectTimeout ?? 15000
    this._persist = options.persist || null
    this._listeners = new Map()
    this._requests = new Map() // ref → request not settled yet, in ref order
    this._outbox = [] // requests still to go out on this connection, in ref order
    this._nextRef = 1
    this._reservedRef = 0
    this._cursor = null // id of the last message the application processed
    this._received = null // id of the last message received
    this._acked = null // the last cursor sent in an ack
    this._confirmed = 0 // the last `answered` sent in an ack
    this._ackDue = false
    this._ackTimer = null
    this._pacer = new Pacer()
    this._attempt = 0
    this._ws = null
    this._welcomed = false
    this._early = [] // messages that came before the welcome (WebTransport)
    this._manual = false
    this._closed = false
    this._started = Date.now()
    this._waiting = [] // {resolve, reject} of connect() / reconnect(): the next welcome
    this.state = 'connecting'
    this.error = null
    this.mailbox = new Mailbox(this)
    this.address = null
    this.config = {}
    this.session = null
    this.user = null
    this.node = null
    this.limits = null
    this.resumed = false
    this.recovered = true
    this.expired = false
    // Channels joined: name → where the last channel message received was in the cluster's
    // history ({epoch, offset}, or null), and the offsets taken since the session last
    // changed (`seen`, to drop a publication both recovered and live). A new session joins
    // them again and recovers each from there (GATEWAY.md §11, §14).
    this._channels = new Map()
    this._rejoin = options.rejoin !== false
    this._restore()
    this._watchNetwork()
  }

  /** Listens to `state` (the new state), `welcome` (the welcome frame), `expired` (the
   *  session was gone when the client came back: a new address), `rejoined` (after
   *  `expired`: the channels joined again and recovered, {previous, address, channels:
   *  [{channel, recovered, count, error?}]}), `close` (a connection ended: {code, reason}).
   *  Returns a function that stops listening. */
  on (event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set())
    this._listeners.get(event).add(listener)
    return () => this._listeners.get(event).delete(listener)
  }

  _emit (event, value) {
    for (const listener of this._listeners.get(event) || []) {
      try { listener(value) } catch (error) { console.error('ferry: listener failed', error) }
    }
  }

  _setState (state) {
    if (this.state === state) return
    this.state = state
    this._emit('state', state)
  }

  // --- persistence ---

  _restore () {
    if (!this._persist) return
    try {
      const saved = JSON.parse(this._persist.getItem('ferry.session') || 'null')
      if (!saved || saved.url !== String(this._url)) return
      this._resume = saved.resume
      this._cursor = saved.cursor
      this._received = saved.cursor
      this._acked = saved.cursor
      if (saved.cursor !== null && saved.cursor !== undefined) {
        this._ids.reset(saved.cursor + 1)
        this._done.reset(saved.cursor + 1)
      }
      this.address = saved.address || null
      this._nextRef = this._reservedRef = saved.nextRef || 1
    } catch (_) {}
  }

  _save () {
    if (!this._persist) return
    try {
      this._persist.setItem('ferry.session', JSON.stringify({
        url: String(this._url),
        resume: this._resume,
        cursor: this._cursor,
        address: this.address,
        nextRef: this._reservedRef
      }))
    } catch (_) {}
  }

  /** The next request ref: increasing for the session, also across page loads with
   *  `persist` (refs are reserved in blocks, so a reloaded page never reuses one). */
  _takeRef () {
    const ref = this._nextRef++
    if (this._persist && this._nextRef > this._reservedRef) {
      this._reservedRef = this._nextRef + REF_BLOCK
      this._save()
    }
    return ref
  }

  // --- the network ---

  _watchNetwork () {
    const target = globalThis
    if (typeof target.addEventListener !== 'function' || typeof navigator === 'undefined' ||
        typeof navigator.onLine !== 'boolean') {
      return
    }
    this._onOffline = () => {
      if (this._closed || this._manual) return
      clearTimeout(this._retryTimer)
      if (this._ws) this._drop(CLOSE.ABNORMAL, 'the browser is offline')
      this._setState('offline')
    }
    this._onOnline = () => {
      if (this._closed || this._manual || this._ws) return
      clearTimeout(this._retryTimer)
      this._attempt = 0
      this._dial()
    }
    target.addEventListener('offline', this._onOffline)
    target.addEventListener('online', this._onOnline)
  }

  _online () {
    return typeof navigator === 'undefined' || navigator.onLine !== false
  }

  // --- connections ---

  /** Resolves at the next welcome; rejects if the client stops for good first. */
  _nextWelcome () {
    return new Promise((resolve, reject) => this._waiting.push({ resolve, reject }))
  }

  /** Opens a connection; a reconnect first asks `getToken` for a fresh token, unless the
   *  token in hand was just given by it. */
  async _dial () {
    if (this._closed || this._manual || this._ws || this._dialing) return
    if (!this._online()) return this._setState('offline')
    this._setState('connecting')
    const getToken = this._options.getToken
    const fresh = this._freshToken
    this._freshToken = false
    if (!fresh && this.session !== null && typeof getToken === 'function') {
      this._dialing = true
      try {
        this._token = await getToken()
      } catch (error) {
        console.error('ferry: getToken failed', error)
      } finally {
        this._dialing = false
      }
      if (this._closed || this._manual || this._ws) return
    }
    const url = new URL(this._url)
    if (this._token) url.searchParams.set('token', this._token)
    if (this._resume) url.searchParams.set('resume', this._resume)
    // Resume after the last message received: those not processed yet are still in memory.
    if (this._resume && this._received !== null) url.searchParams.set('cursor', String(this._received))
    let ws = null
    if (typeof this._WebTransport === 'function' && !this._wtFailed) {
      // WebTransport when the node offers it (GATEWAY.md §13.1), else WebSocket.
      this._dialing = true
      let info = null
      try {
        info = await this._webTransportInfo()
      } finally {
        this._dialing = false
      }
      if (this._closed || this._manual || this._ws) return
      if (info) {
        const wtUrl = new URL(info.url)
        for (const [key, value] of url.searchParams) wtUrl.searchParams.set(key, value)
        try {
          ws = new WebTransportSocket(this._WebTransport, String(wtUrl), info.hashes || [])
          ws.ondata = stream => { incomingData(stream, this._dataHandler).catch(() => {}) }
        } catch (error) {
          ws = null
        }
      }
      if (!ws) this._wtFailed = true
    }
    if (ws) {
      // Not welcomed within the timeout: WebSocket instead, for the rest of this client.
      const socket = ws
      clearTimeout(this._wtTimer)
      this._wtTimer = setTimeout(() => {
        if (this._ws === socket && !this._welcomed) this._fallBack(socket)
      }, this._webTransportTimeout)
    } else {
      try {
        ws = new this._WebSocket(String(url))
      } catch (error) {
        return this._lost(CLOSE.ABNORMAL, String(error), false)
      }
      ws.binaryType = 'arraybuffer'
    }
    this._ws = ws
    this._welcomed = false
    this._early = []
    this._triedToken = this._token
    this._lastSeen = Date.now()
    this._watchdog = setInterval(() => this._checkAlive(), 250)
    ws.onmessage = (event) => {
      if (this._ws !== ws) return
      this._lastSeen = Date.now()
      this._receive(event.data)
    }
    ws.onclose = (event) => {
      if (this._ws !== ws) return
      if (ws instanceof WebTransportSocket && !this._welcomed && event.code === CLOSE.ABNORMAL) {
        return this._fallBack(ws)
      }
      this._lost(event.code, event.reason, this._welcomed)
    }
    ws.onerror = () => {} // a close event follows
  }

  /** `GET /webtransport` of the gateway: {url, hashes, …}, or null (none, or no answer in
   *  time). */
  async _webTransportInfo () {
    if (typeof this._fetch !== 'function') return null
    const where = new URL(this._url)
    where.protocol = where.protocol === 'wss:' ? 'https:' : 'http:'
    where.pathname = where.pathname.replace(/\/ws$/, '') + '/webtransport'
    where.search = ''
    const abort = new AbortController()
    const timer = setTimeout(() => abort.abort(), this._webTransportTimeout)
    try {
      const response = await this._fetch(String(where), { signal: abort.signal, cache: 'no-store' })
      if (!response.ok) return null
      const info = await response.json()
      return info && typeof info.url === 'string' ? info : null
    } catch (_) {
      return null
    } finally {
      clearTimeout(timer)
    }
  }

  /** WebTransport did not bring a welcome: WebSocket from now on, at once. */
  _fallBack (socket) {
    this._wtFailed = true
    socket.onmessage = socket.onclose = null
    try { socket.close() } catch (_) {}
    if (this._ws !== socket) return
    this._ws = null
    clearInterval(this._watchdog)
    this._dial()
  }

  /** How long a connection may stay silent before it counts as dead (ms). */
  _silence () {
    if (this._options.heartbeatTimeout) return this._options.heartbeatTimeout
    if (this.limits && this._welcomed) return this.limits.ping_interval_ms + 3000
    return 10000
  }

  _checkAlive () {
    if (this._ws && Date.now() - this._lastSeen > this._silence()) {
      this._drop(CLOSE.ABNORMAL, `nothing received for ${this._silence()} ms`)
    }
  }

  /** Gives up the current connection without waiting for its closing handshake (which a dead
   *  network would never complete). */
  _drop (code, reason) {
    const ws = this._ws
    if (!ws) return
    try { ws.close(CLOSE.NORMAL) } catch (_) {}
    this._lost(code, reason, this._welcomed)
  }

  /** The connection ended with `code`: stop, or try again after the pause it calls for. */
  _lost (code, reason, welcomed) {
    const ws = this._ws
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null
      this._ws = null
    }
    clearInterval(this._watchdog)
    clearTimeout(this._pumpTimer)
    this._pumpTimer = null
    this._welcomed = false
    this._emit('close', { code, reason })
    if (this._closed) return this._setState('closed')
    if (this._manual) return this._setState('offline')
    if (FINAL.has(code)) {
      return this._stop(new FerryError(FINAL.get(code), `connection closed (${code}${reason ? ': ' + reason : ''})`))
    }
    if (code === CLOSE.UNAUTHORIZED || (code === CLOSE.AUTH_EXPIRED && welcomed)) {
      return this._unauthorized(code, reason)
    }
    if (code === CLOSE.TOO_BIG) this._refuseTooBig()
    if (this.session === null && Date.now() - this._started >= this._connectTimeout) {
      return this._stop(new FerryError('unavailable',
        `could not connect to ${this._url} within ${this._connectTimeout} ms (last close ${code}${reason ? ': ' + reason : ''})`))
    }
    let pause = this._backoff()
    if (code === CLOSE.AGE) pause = 0
    if (code === CLOSE.RATE) pause += (this.limits ? this.limits.rate_window_ms : 1000)
    this._setState('offline')
    clearTimeout(this._retryTimer)
    this._retryTimer = setTimeout(() => this._dial(), pause)
  }

  _backoff () {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(this._attempt, 6))
    this._attempt += 1
    return base / 2 + Math.random() * base / 2
  }

  /** Refused credentials: tried again only with a different token from `getToken`. */
  async _unauthorized (code, reason) {
    const refused = this._triedToken
    const getToken = this._options.getToken
    this._setState('offline')
    let token
    if (typeof getToken === 'function') {
      try {
        token = await getToken()
      } catch (error) {
        console.error('ferry: getToken failed', error)
      }
    }
    if (this._closed || this._manual) return
    if (!token || token === refused) {
      return this._stop(new FerryError('unauthorized',
        `the gateway refused the credentials (${code}${reason ? ': ' + reason : ''})`))
    }
    this._token = token
    this._freshToken = true
    clearTimeout(this._retryTimer)
    this._retryTimer = setTimeout(() => this._dial(), this._backoff())
  }

  /** The gateway closed with 1009: the request it could not take is refused, not sent again. */
  _refuseTooBig () {
    const max = this.limits ? this.limits.max_message_size : Infinity
    const sent = [...this._requests.values()].filter(request => request.sent)
    let refused = sent.filter(request => request.size > max)
    if (refused.length === 0 && sent.length > 0) {
      refused = [sent.reduce((a, b) => (b.size > a.size ? b : a))]
    }
    for (const request of refused) {
      this._settle(request, new FerryError('too_large', `a request of ${request.size} bytes is more than the gateway takes`))
    }
  }

  /** Stops for good: every request not settled fails with `error`. */
  _stop (error) {
    this._closed = true
    this.error = error
    clearTimeout(this._retryTimer)
    clearTimeout(this._refreshTimer)
    clearTimeout(this._ackTimer)
    clearTimeout(this._wtTimer)
    clearInterval(this._watchdog)
    if (this._onOffline) {
      globalThis.removeEventListener('offline', this._onOffline)
      globalThis.removeEventListener('online', this._onOnline)
    }
    if (this._ws) {
      const ws = this._ws
      this._ws = null
      ws.onmessage = ws.onclose = ws.onerror = null
      try { ws.close(CLOSE.NORMAL) } catch (_) {}
    }
    for (const request of [...this._requests.values()]) this._settle(request, error)
    this._outbox = []
    for (const waiter of this._waiting.splice(0)) waiter.reject(error)
    this._setState('closed')
  }

  // --- frames from the gateway ---

  _receive (data) {
    let frame
    try {
      frame = readFrame(data)
    } catch (error) {
      console.error('ferry: unreadable frame', error)
      return
    }
    if (frame.type === 'welcome') return this._welcome(frame)
    if (!this._welcomed) {
      // Over WebTransport messages come on delivery streams of their own, which may overtake
      // the welcome on the control stream (GATEWAY.md §13.6): kept until it has come. One
      // left out (more than maxQueue) leaves a gap the next resume fills.
      if (frame.type === 'message' && this._early.length < this._maxQueue) this._early.push(frame)
      return
    }
    if (frame.type === 'message') return this._message(frame)
    if (frame.type === 'ok' || frame.type === 'error') return this._answer(frame)
    if (frame.type === 'join' || frame.type === 'leave') {
      // gateway_join_leave: a session joined or left a channel this one is a member of.
      return this._emit(frame.type, { channel: frame.channel, session: frame.session, user: frame.user })
    }
    // 'heartbeat', and types this client does not know: their arrival is all that counts.
  }

  _welcome (frame) {
    const previous = this.address
    const expired = frame.expired || (this.session !== null && !frame.resumed)
    const next = frame.next ?? (frame.resumed && this._received !== null ? this._received + 1 : 0)
    if (!frame.resumed) {
      // A new session: ids start again.
      this._cursor = null
      this._received = null
      this._acked = null
      this._done.reset(next)
    } else if (this._done.next < next && this._done.pending === 0 && this._done.last() === this._ids.last()) {
      // Everything received was processed; ids below `next` will not come.
      this._done.reset(next)
      this._cursor = this._done.last()
    }
    // Messages come from `next` on; ids below it were received already (or are gone).
    if (frame.resumed) this._ids.rebase(next)
    else this._ids.reset(next)
    this._received = this._ids.last()
    clearTimeout(this._wtTimer)
    this.transport = this._ws instanceof WebTransportSocket ? 'webtransport' : 'websocket'
    if (expired) {
      // Requests that went out to the old session may or may not have been carried out.
      for (const request of [...this._requests.values()]) {
        if (request.sent) {
          this._settle(request, new FerryError('expired',
            'the session expired before this request was answered: it may or may not have been carried out'))
        }
      }
    }
    this.address = frame.address
    this.config = frame.config
    this.session = frame.session
    this.user = frame.user
    this.node = frame.node
    this.resumed = frame.resumed
    this.recovered = frame.recovered
    this.expired = expired
    this.limits = frame.limits
    this._resume = frame.resume
    this._attempt = 0
    this._welcomed = true
    this._confirmed = 0
    this._pacer.configure(frame.limits.rate_limit, frame.limits.rate_window_ms)
    // What the (possibly new) limits no longer allow is refused before it goes out.
    for (const request of [...this._requests.values()]) {
      const refusal = this._tooLarge(request.payloadSize, request.size)
      if (refusal) this._settle(request, refusal)
    }
    // Every request not answered goes (again), in ref order: the gateway carries out the
    // ones it has not taken yet and answers the others from its journal.
    this._outbox = [...this._requests.values()]
    this._ackDue = true
    this._save()
    this._scheduleRefresh(frame.auth_expires)
    this._setState('open')
    if (expired && previous) this._emit('expired', { previous, address: frame.address })
    this._emit('welcome', frame)
    for (const waiter of this._waiting.splice(0)) waiter.resolve(this)
    for (const early of this._early.splice(0)) this._message(early)
    this._pump()
    if (expired && previous && this._rejoin && this._channels.size > 0) {
      this._rejoinChannels(previous, frame.address)
    }
  }

  /** A new session took the place of one that is gone (its node gone for good, or its TTL
   *  over): joins every channel the old one had joined and recovers each from the last
   *  publication received, then emits `rejoined` with what came of it. */
  async _rejoinChannels (previous, address) {
    const session = this.session
    const channels = await Promise.all([...this._channels].map(async ([channel, state]) => {
      const position = state.position
      state.base = position ? position.offset : -1
      // From now on, what is taken is remembered (up to SEEN_MAX) so that a publication
      // that comes both live and recovered reaches the application once.
      state.seen = new Set()
      try {
        await this.join(channel)
        if (!position) return { channel, recovered: false, count: 0 }
        const answer = await this.recover(channel, position.epoch, position.offset)
        return { channel, recovered: Boolean(answer && answer.recovered), count: (answer && answer.count) || 0 }
      } catch (error) {
        return { channel, recovered: false, count: 0, error }
      }
    }))
    if (this.session !== session || this._closed) return // changed again meanwhile
    this._emit('rejoined', { previous, address, channels })
  }

  /** Whether a channel message is one the application had (recovered and live both, or
   *  recovered again): remembers its position otherwise. */
  _duplicate (frame) {
    const state = this._channels.get(frame.channel)
    if (!state || frame.epoch === undefined || frame.offset === undefined) return false
    const position = state.position
    if (state.seen) {
      if (position && position.epoch === frame.epoch && frame.offset <= state.base) return true
      if (state.seen.has(frame.offset)) return true
      state.seen.add(frame.offset)
      if (state.seen.size > SEEN_MAX) state.seen.delete(state.seen.values().next().value)
    }
    if (!position || position.epoch !== frame.epoch || frame.offset > position.offset) {
      state.position = { epoch: frame.epoch, offset: frame.offset }
    }
    return false
  }

  _message (frame) {
    // Already received (before a reconnect, or on another stream): delivered once only.
    // Over WebTransport ids arrive in order per source only: the cursor moves contiguously.
    if (!this._ids.take(frame.id)) return
    this._received = this._ids.last()
    const message = {
      id: frame.id,
      from: frame.from,
      data: frame.data,
      encoding: frame.encoding,
      binary: frame.encoding === 'bytes'
    }
    if (frame.channel !== undefined) message.channel = frame.channel
    if (frame.user !== undefined) message.user = frame.user
    // In a cluster: where the publication is in the cluster's history (GATEWAY.md §14).
    if (frame.epoch !== undefined) message.epoch = frame.epoch
    if (frame.offset !== undefined) message.offset = frame.offset
    if (frame.push) message.push = true
    if (frame.channel !== undefined && this._duplicate(frame)) return this._processed(message)
    this.mailbox._deliver(message)
  }

  _answer (frame) {
    const request = this._requests.get(frame.ref)
    if (!request) return // answered before, or given up (timeout)
    if (frame.type === 'ok') this._settle(request, null, frame.data)
    else this._settle(request, new FerryError(frame.code || 'internal', frame.message))
  }

  /** Settles `request` (with `error`, or with `value`) and forgets it; the gateway is told
   *  with the next ack that its answer is no longer needed. */
  _settle (request, error, value) {
    if (!this._requests.delete(request.ref)) return
    if (request.timer) clearTimeout(request.timer)
    if (error) request.reject(error)
    else request.resolve(value)
    this._scheduleAck()
  }

  _processed (message) {
    this._done.take(message.id)
    this._cursor = this._done.last()
    this._scheduleAck()
  }

  _scheduleAck () {
    if (this._ackTimer || this._closed) return
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null
      this._ackDue = true
      this._save()
      this._pump()
    }, ACK_DELAY_MS)
  }

  /** The ack to send now, if anything changed: messages processed, answers received. */
  _ackFrame () {
    const ack = { type: 'ack' }
    if (this._cursor !== null && this._cursor !== this._acked) ack.id = this._cursor
    const lowest = this._requests.size > 0 ? this._requests.keys().next().value : this._nextRef
    if (lowest - 1 > this._confirmed) ack.answered = lowest - 1
    if (ack.id === undefined && ack.answered === undefined) return null
    return ack
  }

  // --- frames to the gateway ---

  /** Sends what is due, within the pace the gateway allows; waits for the pace otherwise. */
  _pump () {
    clearTimeout(this._pumpTimer)
    this._pumpTimer = null
    const ws = this._ws
    if (!ws || !this._welcomed) return
    while (this._outbox.length > 0 && !this._requests.has(this._outbox[0].ref)) this._outbox.shift()
    while (this._ackDue || this._outbox.length > 0) {
      const ack = this._ackDue ? this._ackFrame() : null
      if (ack === null) this._ackDue = false
      if (ack === null && this._outbox.length === 0) break
      if (!this._pacer.take()) {
        this._pumpTimer = setTimeout(() => this._pump(), this._pacer.wait())
        return
      }
      try {
        if (ack !== null) {
          ws.send(JSON.stringify(ack))
          this._ackDue = false
          if (ack.id !== undefined) this._acked = ack.id
          if (ack.answered !== undefined) this._confirmed = ack.answered
          continue
        }
        const request = this._outbox.shift()
        request.sent = true
        if (ws instanceof WebTransportSocket) ws.send(request.frame, request.lane, request.last)
        else ws.send(request.frame)
      } catch (_) {
        return // the socket is closing: what is left goes on the next connection
      }
      while (this._outbox.length > 0 && !this._requests.has(this._outbox[0].ref)) this._outbox.shift()
    }
  }

  /** The FerryError for a payload or frame the gateway would not take, or null. */
  _tooLarge (payloadSize, frameSize) {
    if (!this.limits) return null
    if (payloadSize > this.limits.max_payload_size) {
      return new FerryError('too_large',
        `a message of ${payloadSize} bytes is more than the node takes (${this.limits.max_payload_size})`)
    }
    if (frameSize > this.limits.max_message_size) {
      return new FerryError('too_large',
        `a request of ${frameSize} bytes is more than the gateway takes (${this.limits.max_message_size})`)
    }
    return null
  }

  _request (fields, data, hasData, timeout) {
    if (this._closed) return Promise.reject(this.error || new FerryError('closed', 'the client is closed'))
    if (this._requests.size >= this._maxQueue) {
      return Promise.reject(new FerryError('queue_full',
        `${this._maxQueue} requests are already waiting for their answers (maxQueue)`))
    }
    let payload = null
    let built
    try {
      if (hasData) payload = payloadOf(data)
      const payloadSize = payload ? payload.size : 0
      const early = this._tooLarge(payloadSize, 0)
      if (early) throw early
      const ref = this._takeRef()
      built = requestFrame({ ...fields, ref }, payload)
      built.ref = ref
      built.payloadSize = payloadSize
      Object.assign(built, laneOf({ ...fields, ref }))
      const late = this._tooLarge(0, built.size)
      if (late) throw late
    } catch (error) {
      return Promise.reject(error)
    }
    return new Promise((resolve, reject) => {
      const request = { ...built, resolve, reject, timer: null, sent: false }
      if (timeout) {
        request.timer = setTimeout(() => {
          this._settle(request, new FerryError('timeout', `no answer within ${timeout} ms`))
        }, timeout + 1000)
      }
      this._requests.set(request.ref, request)
      this._outbox.push(request)
      this._pump()
    })
  }

  /** Sends `message` to an address (`ferry1…`), `{channel}`, `{user}` or `{session}`: a
   *  string as UTF-8 text, bytes (ArrayBuffer, typed array) as they are, anything else as
   *  JSON. Resolves once the target accepted it. */
  send (to, message) {
    return this._request({ type: 'send', to }, message, true).then(() => undefined)
  }

  /** Calls a service (`ferry1…`, `NODEID/NAME` or `NODEID@HOST:PORT/NAME`) with `request`
   *  (as `send` encodes it) and resolves with its reply (a JSON value, a string, or a
   *  Uint8Array: GATEWAY.md §3). `timeout` in milliseconds. */
  call (to, request, { timeout } = {}) {
    const fields = { type: 'call', to }
    if (timeout) fields.timeout_ms = timeout
    return this._request(fields, request, true, timeout)
  }

  /** A data stream with a service (GATEWAY.md §13.11): uploads `body` (a Blob, a
   *  ReadableStream of bytes, bytes or a string) to the service `to` (as `call` takes it) with
   *  the request object `request` (as `send` encodes it; not bytes), and gives the service's
   *  data as `readable` (a ReadableStream of Uint8Array) and its reply as `done` (resolved
   *  with `{ reply, encoding, sent, received }` once the service read the whole upload and
   *  answered). Backpressure both ways: the body is read only as fast as the network takes
   *  it, the service's data only as fast as `readable` is read. `onProgress({ sent,
   *  received, total })` after every chunk. WebTransport only: over WebSocket it fails with
   *  FerryError('unsupported'); not connected, with 'offline' (closed: as the client's
   *  requests); a connection lost meanwhile
   *  fails it with 'interrupted' (data streams are not resumed). */
  data (to, { request, body, onProgress, signal } = {}) {
    const failed = (error) => {
      const done = Promise.reject(error)
      done.catch(() => {})
      const readable = new ReadableStream({ start (controller) { controller.error(error) } })
      return { readable, done }
    }
    if (this._closed) return failed(this.error || new FerryError('closed', 'the client is closed'))
    const ws = this._ws
    if (!(ws instanceof WebTransportSocket) || !this._welcomed) {
      const noWebTransport = this._wtFailed || typeof this._WebTransport !== 'function'
      if ((ws && !(ws instanceof WebTransportSocket)) || (!ws && noWebTransport)) {
        return failed(new FerryError('unsupported',
          'data streams need WebTransport (GATEWAY.md §13.11); this connection is a WebSocket'))
      }
      return failed(new FerryError('offline', 'not connected: data streams are not queued'))
    }
    let header
    try {
      const payload = request === undefined ? undefined : payloadOf(request)
      if (payload && payload.bytes) throw new FerryError('bad_request', 'a data request is JSON or text, not bytes')
      header = requestFrame({ type: 'data', to }, payload).frame
      return dataStream(ws._wt, header, body, onProgress, signal)
    } catch (error) {
      return failed(error instanceof FerryError ? error : new FerryError('bad_request', String(error)))
    }
  }

  /** Takes peers' data for this session (GATEWAY.md §13.12, WebTransport only):
   *  `handler({ from, data, encoding }, readable)` gets the sender's node id, its metadata (a
   *  JSON value, text or bytes, as messages' `data`) and the bytes as a ReadableStream of
   *  Uint8Array (read at the handler's pace: the sender waits); what it resolves with (JSON or
   *  text) is the sender's answer, a rejection fails the sender's conversation with its
   *  message. Without a handler, incoming data is refused. */
  onData (handler) {
    this._dataHandler = handler
  }

  /** Uploads `body` to the service `to` (see `data`); resolves with `{ reply, encoding, sent,
   *  received }` once the service read all of it and answered. */
  sendData (to, body, { request, onProgress, signal } = {}) {
    const { readable, done } = this.data(to, { request, body, onProgress, signal })
    readable.pipeTo(new WritableStream()).catch(() => {})
    return done
  }

  /** Downloads from the service `to` (see `data`): `{ readable, done }` at once. */
  recvData (to, { request, onProgress, signal } = {}) {
    return this.data(to, { request, onProgress, signal })
  }

  /** Joins a channel. */
  join (channel) {
    return this._request({ type: 'join', channel }, undefined, false).then(() => {
      if (!this._channels.has(channel)) this._channels.set(channel, { position: null, seen: null, base: -1 })
    })
  }

  /** Leaves a channel. */
  leave (channel) {
    this._channels.delete(channel)
    return this._request({ type: 'leave', channel }, undefined, false).then(() => undefined)
  }

  /** Who is in a channel (on every node of a cluster): `[{ session, user }, …]`. */
  presence (channel) {
    return this._request({ type: 'presence', channel }, undefined, false)
      .then(answer => (answer && answer.members) || [])
  }

  /** In a cluster: has the gateway deliver again the channel's publications after `offset`
   *  of history `epoch` (those of the last channel message received); resolves with
   *  `{ recovered, count }` (GATEWAY.md §5.3). Publications may then come twice: compare
   *  `message.epoch` and `message.offset`. */
  recover (channel, epoch, offset) {
    return this._request({ type: 'recover', channel, epoch, offset }, undefined, false)
  }

  /** A round trip to the gateway. */
  ping () {
    return this._request({ type: 'ping' }, undefined, false).then(() => undefined)
  }

  /** Hands the gateway a fresh token for the same user, without dropping the session. */
  refresh (token) {
    this._token = token
    return this._request({ type: 'refresh', token }, undefined, false).then(() => undefined)
  }

  _scheduleRefresh (expires) {
    clearTimeout(this._refreshTimer)
    if (!expires || typeof this._options.getToken !== 'function') return
    const ms = Math.max(1000, (expires * 1000 - Date.now()) * 0.8)
    this._refreshTimer = setTimeout(async () => {
      try {
        const token = await this._options.getToken()
        await this.refresh(token)
      } catch (error) {
        console.error('ferry: token refresh failed', error)
      }
    }, ms)
  }

  /** Drops the connection and stays offline until `reconnect()` (requests wait meanwhile). */
  disconnect () {
    this._manual = true
    clearTimeout(this._retryTimer)
    if (this._ws) this._drop(CLOSE.NORMAL, 'disconnect()')
    this._setState('offline')
  }

  /** Connects again now (after `disconnect()`, or to skip a pause); resolves at the welcome. */
  reconnect () {
    if (this._closed) return Promise.reject(this.error || new FerryError('closed', 'the client is closed'))
    this._manual = false
    clearTimeout(this._retryTimer)
    if (this._ws && this._welcomed) return Promise.resolve(this)
    const welcome = this._nextWelcome()
    this._attempt = 0
    this._dial()
    return welcome
  }

  /** Closes the client for good (its requests not answered yet fail with 'closed'); the
   *  session ends on the node after its TTL. */
  close () {
    if (this._closed) return
    this._stop(new FerryError('closed', 'the client was closed'))
  }
}

// --- capabilities (docs/PROTOCOL.md §4.11, docs/GATEWAY.md §5.9) ---------------------------
// Offline attenuation of addresses (the HMAC chain, computed with WebCrypto), and the session's
// grants. Kept apart from the rest of the client: pure functions, and three methods added to
// Client's prototype at the end of this section.

const CAVEAT_EXPIRES = 0x01
const CAVEAT_MAX_MESSAGES = 0x02
const CAVEAT_RATE = 0x03
const CAVEAT_SERVICE = 0x04
const CAVEAT_HOLDER = 0x05
const MAX_CAVEATS = 8
const MAX_CAVEAT_VALUE_LEN = 64
const U32_MAX = 0xffffffff

let crcTable = null

/** CRC-32/ISO-HDLC (zlib's), docs/PROTOCOL.md §4.3. */
function crc32 (bytes) {
  if (crcTable === null) {
    crcTable = new Uint32Array(256)
    for (let n = 0; n < 256; n++) {
      let c = n
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
      crcTable[n] = c >>> 0
    }
  }
  let crc = 0xffffffff
  for (const byte of bytes) crc = crcTable[(crc ^ byte) & 0xff] ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

function fromBase64url (text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/')
  const binary = atob(base64 + '='.repeat((4 - base64.length % 4) % 4))
  return Uint8Array.from(binary, c => c.charCodeAt(0))
}

function toBase64url (bytes) {
  let binary = ''
  for (const byte of bytes) binary += String.fromCharCode(byte)
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

function concat (...parts) {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0))
  let at = 0
  for (const part of parts) {
    out.set(part, at)
    at += part.length
  }
  return out
}

function u64be (value) {
  const out = new Uint8Array(8)
  new DataView(out.buffer).setBigUint64(0, BigInt(value))
  return out
}

function readU64 (bytes, at) {
  return new DataView(bytes.buffer, bytes.byteOffset + at, 8).getBigUint64(0)
}

function notAddress (why) {
  return new FerryError('bad_request', `not a ferry address: ${why}`)
}

/** The parts of a `ferry1` or `ferry2` address (§4.1, §4.11): node, mailbox, expires, grant
 *  (their bytes), its caveats (each `kind | len | value`), its proof (signature or tag) and its
 *  hints (kept verbatim). Checks the form and the checksum, not the proof (only the node can). */
function parseCapability (address) {
  if (typeof address !== 'string') throw notAddress('not a string')
  const format = address.slice(0, 6)
  if (format !== 'ferry1' && format !== 'ferry2') throw notAddress('no ferry1/ferry2 prefix')
  const bytes = address.length <= 1186 ? fromBase64url(address.slice(6)) : null
  if (bytes === null || bytes.length < 95) throw notAddress('malformed text')
  const body = bytes.subarray(0, bytes.length - 4)
  const crc = new DataView(bytes.buffer, bytes.length - 4, 4).getUint32(0)
  if (crc32(body) !== crc) throw notAddress('checksum mismatch')
  const parts = {
    node: body.slice(0, 32),
    mailbox: body.slice(32, 40),
    expires: body.slice(40, 48),
    grant: new Uint8Array(8),
    caveats: [],
    signature: null,
    tag: null,
    hints: null
  }
  let at
  if (format === 'ferry1') {
    if (body.length < 112) throw notAddress('too short')
    parts.signature = body.slice(48, 112)
    at = 112
  } else {
    parts.grant = body.slice(48, 56)
    const count = body[56]
    if (count > MAX_CAVEATS) throw notAddress('too many caveats')
    at = 57
    for (let i = 0; i < count; i++) {
      if (at + 2 > body.length) throw notAddress('truncated caveat')
      const len = body[at + 1]
      if (len > MAX_CAVEAT_VALUE_LEN || at + 2 + len > body.length) throw notAddress('invalid caveat')
      parts.caveats.push(body.slice(at, at + 2 + len))
      at += 2 + len
    }
    const proofLen = count === 0 ? 64 : 32
    if (at + proofLen > body.length) throw notAddress('truncated proof')
    if (count === 0) parts.signature = body.slice(at, at + 64)
    else parts.tag = body.slice(at, at + 32)
    at += proofLen
  }
  parts.hints = body.slice(at)
  return parts
}

/** The earliest of an address's expiry and its expiry caveats (unix seconds), or null. */
function effectiveExpiry (parts) {
  let earliest = readU64(parts.expires, 0)
  for (const caveat of parts.caveats) {
    if (caveat[0] === CAVEAT_EXPIRES && caveat[1] === 8) {
      const at = readU64(caveat, 2)
      if (earliest === 0n || at < earliest) earliest = at
    }
  }
  return earliest === 0n ? null : earliest
}

function unixSeconds (when, what) {
  const secs = when instanceof Date ? Math.floor(when.getTime() / 1000) : when
  if (!Number.isSafeInteger(secs) || secs <= 0) {
    throw new FerryError('bad_request', `${what}: a Date or seconds since the epoch`)
  }
  return secs
}

function count32 (value, what) {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw new FerryError('bad_request', `${what}: an integer from 0 to ${U32_MAX}`)
  }
  const out = new Uint8Array(4)
  new DataView(out.buffer).setUint32(0, value)
  return out
}

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567'

/** A NodeId's 32 bytes from its text (52 characters of lowercase base32, no padding). */
function nodeIdBytes (text) {
  if (typeof text !== 'string' || !/^[a-z2-7]{52}$/.test(text)) {
    throw new FerryError('bad_request', 'only: a node id (52 characters of base32)')
  }
  const out = new Uint8Array(32)
  let bits = 0
  let value = 0
  let at = 0
  for (const char of text) {
    value = (value << 5) | BASE32.indexOf(char)
    bits += 5
    if (bits >= 8) {
      bits -= 8
      if (at < 32) out[at++] = (value >>> bits) & 0xff
    }
  }
  return out
}

/** The caveats `options` ask for, in the order `ferry address attenuate` appends them:
 *  expires, max, rate, service, only. */
function caveatsOf (options, current) {
  const caveat = (kind, value) => concat(Uint8Array.of(kind, value.length), value)
  const out = []
  const { expires, max, rate, service, only } = options || {}
  if (expires !== undefined) {
    const at = BigInt(unixSeconds(expires, 'expires'))
    if (current !== null && at >= current) {
      throw new FerryError('bad_request', `expires: ${at} is not earlier than the address's ${current}`)
    }
    out.push(caveat(CAVEAT_EXPIRES, u64be(at)))
  }
  if (max !== undefined) out.push(caveat(CAVEAT_MAX_MESSAGES, count32(max, 'max')))
  if (rate !== undefined) {
    const { messages, per } = rate || {}
    if (!(messages >= 1) || !(per >= 1)) {
      throw new FerryError('bad_request', 'rate: {messages, per} with at least 1 message per at least 1 second')
    }
    out.push(caveat(CAVEAT_RATE, concat(count32(messages, 'rate.messages'), count32(per, 'rate.per'))))
  }
  if (service !== undefined) {
    if (typeof service !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(service)) {
      throw new FerryError('bad_request', 'service: 1 to 64 of A-Z a-z 0-9 . _ -')
    }
    out.push(caveat(CAVEAT_SERVICE, encoder.encode(service)))
  }
  if (only !== undefined) out.push(caveat(CAVEAT_HOLDER, nodeIdBytes(only)))
  return out
}

async function hmacSha256 (key, message) {
  const subtle = globalThis.crypto && globalThis.crypto.subtle
  if (!subtle) {
    throw new FerryError('no_webcrypto',
      'attenuating an address needs WebCrypto (crypto.subtle: a secure context, or Node 18+)')
  }
  const imported = await subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
  return new Uint8Array(await subtle.sign('HMAC', imported, message))
}

/** Derives a narrower address from `address` (`ferry1…` or `ferry2…`), offline: whoever holds
 *  an address can, and nobody can undo it. `expires` (a Date or seconds since the epoch, earlier
 *  than the address's expiry), `max` (at most that many messages, counted together with every
 *  address derived from the result), `rate` (`{messages, per}`: at most `messages` per `per`
 *  seconds), `service` (conversations with that service only), `only` (a NodeId: only that
 *  node may use it, a handoff). Resolves with the `ferry2…` address (the same address when no
 *  option is given); rejects with FerryError `bad_request` (no address, an invalid option,
 *  more than 8 caveats) or `no_webcrypto`. The node checks the result (docs/PROTOCOL.md §4.11). */
export async function attenuate (address, options = {}) {
  const parts = parseCapability(address)
  const added = caveatsOf(options, effectiveExpiry(parts))
  if (added.length === 0) return address
  const caveats = parts.caveats.concat(added)
  if (caveats.length > MAX_CAVEATS) {
    throw new FerryError('bad_request', `an address carries at most ${MAX_CAVEATS} caveats`)
  }
  let tag = parts.tag
  if (tag === null) {
    const base = concat(encoder.encode('ferry/caveat/v1'), parts.node, parts.mailbox, parts.expires, parts.grant)
    tag = await hmacSha256(parts.signature, base)
  }
  for (const caveat of added) tag = await hmacSha256(tag, caveat)
  const body = concat(parts.node, parts.mailbox, parts.expires, parts.grant,
    Uint8Array.of(caveats.length), ...caveats, tag, parts.hints)
  const crc = new Uint8Array(4)
  new DataView(crc.buffer).setUint32(0, crc32(body))
  return 'ferry2' + toBase64url(concat(body, crc))
}

/** Attenuates this session's address (or `address`): see `attenuate`. */
Client.prototype.attenuate = function (address, options) {
  if (options === undefined && address !== null && typeof address === 'object') {
    options = address
    address = undefined
  }
  return attenuate(address === undefined ? this.address : address, options)
}

/** Mints an address of this session's mailbox under a new grant (expiring at `expires`, a Date
 *  or seconds since the epoch, if given): resolves with `{address, grant}`. Revoking `grant`
 *  later voids that address and every address derived from it, and nothing else. */
Client.prototype.grant = function ({ expires } = {}) {
  const fields = { type: 'grant' }
  try {
    if (expires !== undefined) fields.expires = unixSeconds(expires, 'expires')
  } catch (error) {
    return Promise.reject(error)
  }
  return this._request(fields, undefined, false)
}

/** Revokes a grant of this session's mailbox (its 16 hex digits, as `grant()` gave them):
 *  resolves once the node stored the revocation. Senders holding its addresses then fail with
 *  FerryError `revoked`. */
Client.prototype.revoke = function (grant) {
  return this._request({ type: 'revoke', grant }, undefined, false).then(() => undefined)
}

/** Connects to the gateway at `url` (`http(s)://host:port`, or its `ws(s)://…/ws`; default:
 *  this page's origin). Resolves once the first welcome arrived; rejects with a FerryError:
 *  `unauthorized`, `forbidden`, or `unavailable` after `connectTimeout` ms of trying. */
export function connect (url, options = {}) {
  let client
  try {
    client = new Client(url, options)
  } catch (error) {
    return Promise.reject(error)
  }
  const welcome = client._nextWelcome()
  client._dial()
  return welcome
}

/** GenBrowser's name for `connect`. */
export const start = connect

export default { connect, start, sameAddress, addressKey, attenuate, Client, FerryError, CLOSE }
