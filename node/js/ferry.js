// ferry.js: the browser client of the ferry gateway. A plain ES module with no dependencies
// and no build step; the gateway serves it at /ferry.js (types at /ferry.d.ts).
//
//   import * as Ferry from '/ferry.js'
//   const client = await Ferry.connect(location.origin, {token})
//   client.address                          // this browser's capability address
//   client.config                           // the configuration object from the node
//   client.mailbox.setHandler(m => …)       // or: await client.mailbox.receive({timeout})
//   await client.send(address, {any: 'json'})
//   const reply = await client.call(service, request, {timeout: 5000})
//   await client.join('room.1'); await client.send({channel: 'room.1'}, 'hi')
//
// The wire protocol is docs/GATEWAY.md. The client reconnects by itself (jittered exponential
// backoff) and resumes its session: messages sent to it meanwhile arrive, in order, once; its
// own requests made while offline are queued (bounded) and sent in order once it is back.

const encoder = new TextEncoder()
const decoder = new TextDecoder()

/** An error with a stable `code` (the gateway's error codes, and a few of the client's). */
export class FerryError extends Error {
  constructor (code, message) {
    super(message || code)
    this.name = 'FerryError'
    this.code = code
  }
}

/** Close codes after which the client does not reconnect by itself. */
const FINAL_CLOSES = new Set([1000, 4003, 4400, 4409])

function wsUrl (url) {
  const base = url || (typeof location !== 'undefined' ? location.origin : '')
  const parsed = new URL(base, typeof location !== 'undefined' ? location.href : undefined)
  if (parsed.protocol === 'http:') parsed.protocol = 'ws:'
  if (parsed.protocol === 'https:') parsed.protocol = 'wss:'
  if (parsed.pathname === '/' || parsed.pathname === '') parsed.pathname = '/ws'
  return parsed
}

function isBinary (value) {
  return value instanceof ArrayBuffer || ArrayBuffer.isView(value)
}

function bytesOf (value) {
  if (value instanceof ArrayBuffer) return new Uint8Array(value)
  return new Uint8Array(value.buffer, value.byteOffset, value.byteLength)
}

/** Reads a server frame: text (JSON) or binary (u32 header length, header, payload). */
function readFrame (data) {
  if (typeof data === 'string') return JSON.parse(data)
  const bytes = new Uint8Array(data)
  const length = new DataView(data).getUint32(0)
  const header = JSON.parse(decoder.decode(bytes.subarray(4, 4 + length)))
  header.data = bytes.slice(4 + length)
  header.binary = true
  return header
}

/** Encodes a request: JSON data in a text frame, bytes in a binary frame. */
function encodeFrame (fields, data, hasData) {
  if (hasData && isBinary(data)) {
    const header = encoder.encode(JSON.stringify(fields))
    const payload = bytesOf(data)
    const out = new Uint8Array(4 + header.length + payload.length)
    new DataView(out.buffer).setUint32(0, header.length)
    out.set(header, 4)
    out.set(payload, 4 + header.length)
    return out.buffer
  }
  if (hasData) {
    if (data === undefined) throw new FerryError('bad_request', 'a message must not be undefined')
    return JSON.stringify({ ...fields, data })
  }
  return JSON.stringify(fields)
}

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

/** A connected (or reconnecting) client. Made by `connect`. */
export class Client {
  constructor (url, options) {
    this._url = wsUrl(url)
    this._options = options
    this._token = options.token
    this._maxQueue = options.maxQueue ?? 1000
    this._persist = options.persist || null
    this._listeners = new Map()
    this._pending = new Map() // ref → request
    this._queue = [] // requests waiting for a connection, in order
    this._nextRef = 1
    this._cursor = null // id of the last message the application processed
    this._received = null // id of the last message received
    this._acked = null
    this._ackTimer = null
    this._attempt = 0
    this._manual = false
    this._closed = false
    this.state = 'connecting'
    this.mailbox = new Mailbox(this)
    this.address = null
    this.config = {}
    this.session = null
    this.user = null
    this.resumed = false
    this.recovered = true
    if (this._persist) {
      try {
        const saved = JSON.parse(this._persist.getItem('ferry.session') || 'null')
        if (saved && saved.url === String(this._url)) {
          this._resume = saved.resume
          this._cursor = saved.cursor
          this._received = saved.cursor
        }
      } catch (_) {}
    }
  }

  /** Listens to `state` (new state), `welcome` (the welcome frame), `expired` (the session was
   *  gone on reconnect: a new address), `close` ({code, reason}). Returns an unsubscribe. */
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

  _open () {
    return new Promise((resolve, reject) => {
      const url = new URL(this._url)
      if (this._token) url.searchParams.set('token', this._token)
      if (this._resume) url.searchParams.set('resume', this._resume)
      // Resume after the last message received: those not processed yet are still in memory.
      if (this._resume && this._received !== null) url.searchParams.set('cursor', String(this._received))
      let welcomed = false
      const ws = new WebSocket(url)
      ws.binaryType = 'arraybuffer'
      this._ws = ws
      ws.onmessage = (event) => {
        let frame
        try { frame = readFrame(event.data) } catch (error) {
          console.error('ferry: unreadable frame', error)
          return
        }
        if (frame.type === 'welcome') {
          welcomed = true
          this._welcome(frame)
          resolve(this)
        } else {
          this._frame(frame)
        }
      }
      ws.onclose = (event) => {
        if (this._ws !== ws) return
        this._ws = null
        if (!welcomed) {
          reject(new FerryError('connect_failed',
            `could not connect to ${this._url} (code ${event.code}${event.reason ? ': ' + event.reason : ''})`))
        }
        this._closedSocket(event.code, event.reason, welcomed)
      }
    })
  }

  _welcome (frame) {
    const hadSession = this.session !== null
    if (hadSession && !frame.resumed) {
      // The old session is gone: new address, ids start again.
      this._emit('expired', { previous: this.address, address: frame.address })
    }
    if (!frame.resumed) {
      this._cursor = null
      this._received = null
      this._acked = null
    }
    this.address = frame.address
    this.config = frame.config
    this.session = frame.session
    this.user = frame.user
    this.node = frame.node
    this.resumed = frame.resumed
    this.recovered = frame.recovered
    this.limits = frame.limits
    this._resume = frame.resume
    this._attempt = 0
    this._save()
    this._scheduleRefresh(frame.auth_expires)
    this._setState('open')
    this._emit('welcome', frame)
    // Acks that could not go out while offline.
    if (this._cursor !== null && this._cursor !== this._acked) {
      this._ws.send(JSON.stringify({ type: 'ack', id: this._cursor }))
      this._acked = this._cursor
    }
    // Requests not answered on the last connection go again, then the queued ones, in order.
    const again = [...this._pending.values()].sort((a, b) => a.ref - b.ref)
    for (const request of again) this._transmit(request)
    const queued = this._queue
    this._queue = []
    for (const request of queued) {
      this._pending.set(request.ref, request)
      this._transmit(request)
    }
  }

  _save () {
    if (!this._persist) return
    try {
      this._persist.setItem('ferry.session', JSON.stringify({
        url: String(this._url), resume: this._resume, cursor: this._cursor
      }))
    } catch (_) {}
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

  _frame (frame) {
    if (frame.type === 'message') {
      // Already received (before a reconnect): delivered once only.
      if (this._received !== null && frame.id <= this._received) return
      this._received = frame.id
      const message = {
        id: frame.id,
        from: frame.from,
        data: frame.data,
        binary: frame.binary === true
      }
      if (frame.channel !== undefined) message.channel = frame.channel
      if (frame.user !== undefined) message.user = frame.user
      if (frame.push) message.push = true
      this.mailbox._deliver(message)
      return
    }
    const request = this._pending.get(frame.ref)
    if (!request) return
    this._pending.delete(frame.ref)
    if (request.timer) clearTimeout(request.timer)
    if (frame.type === 'ok') request.resolve(frame.data)
    else request.reject(new FerryError(frame.code || 'internal', frame.message))
  }

  _processed (message) {
    if (this._cursor === null || message.id > this._cursor) this._cursor = message.id
    if (this._ackTimer) return
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null
      if (this._cursor !== null && this._cursor !== this._acked && this._ws && this.state === 'open') {
        this._ws.send(JSON.stringify({ type: 'ack', id: this._cursor }))
        this._acked = this._cursor
      }
      this._save()
    }, 50)
  }

  _closedSocket (code, reason, welcomed) {
    this._emit('close', { code, reason })
    if (this._closed) return this._setState('closed')
    const expiredToken = code === 4002 && typeof this._options.getToken !== 'function'
    if (this._manual || FINAL_CLOSES.has(code) || expiredToken || (!welcomed && this.session === null)) {
      if (!this._manual) {
        this._closed = true
        for (const request of [...this._pending.values(), ...this._queue]) {
          request.reject(new FerryError('closed', `connection closed (${code}${reason ? ': ' + reason : ''})`))
        }
        this._pending.clear()
        this._queue = []
        return this._setState('closed')
      }
      return this._setState('offline')
    }
    this._setState('offline')
    // Jittered exponential backoff; an age limit (4001) reconnects at once.
    const base = code === 4001 ? 0 : Math.min(10000, 250 * 2 ** Math.min(this._attempt, 6))
    this._attempt += 1
    const pause = base / 2 + Math.random() * base / 2
    this._retryTimer = setTimeout(() => this._reconnect(), pause)
  }

  async _reconnect () {
    if (this._closed || this._manual || this._ws) return
    this._setState('connecting')
    try {
      if (typeof this._options.getToken === 'function') {
        this._token = await this._options.getToken()
      }
      await this._open()
    } catch (_) {
      // _closedSocket scheduled the next attempt
    }
  }

  _transmit (request) {
    if (this._ws && this.state === 'open') {
      try {
        this._ws.send(request.frame)
      } catch (error) {
        // The socket is closing; the request goes again after the next welcome.
      }
    }
  }

  _request (fields, data, hasData, timeout) {
    if (this._closed) return Promise.reject(new FerryError('closed', 'the client is closed'))
    let frame
    const ref = this._nextRef++
    try {
      frame = encodeFrame({ ...fields, ref }, data, hasData)
    } catch (error) {
      return Promise.reject(error)
    }
    return new Promise((resolve, reject) => {
      const request = { ref, frame, resolve, reject, timer: null }
      if (timeout) {
        request.timer = setTimeout(() => {
          this._pending.delete(ref)
          this._queue = this._queue.filter(r => r !== request)
          reject(new FerryError('timeout', `no answer within ${timeout} ms`))
        }, timeout + 1000)
      }
      if (this.state === 'open' && this._ws) {
        this._pending.set(ref, request)
        this._transmit(request)
      } else if (this._queue.length >= this._maxQueue) {
        reject(new FerryError('offline_queue_full', `${this._maxQueue} requests already wait for the connection`))
      } else {
        this._queue.push(request)
      }
    })
  }

  /** Sends `message` (JSON, or bytes: ArrayBuffer / typed array) to an address (`ferry1…`),
   *  `{channel}`, `{user}` or `{session}`. Resolves once the target accepted it. */
  send (to, message) {
    return this._request({ type: 'send', to }, message, true).then(() => undefined)
  }

  /** Calls a service (`ferry1…`, `NODEID/NAME` or `NODEID@HOST:PORT/NAME`) and resolves with
   *  its reply (JSON, or a Uint8Array). `timeout` in milliseconds. */
  call (to, request, { timeout } = {}) {
    const fields = { type: 'call', to }
    if (timeout) fields.timeout_ms = timeout
    return this._request(fields, request, true, timeout)
  }

  /** Joins a channel. */
  join (channel) {
    return this._request({ type: 'join', channel }, undefined, false).then(() => undefined)
  }

  /** Leaves a channel. */
  leave (channel) {
    return this._request({ type: 'leave', channel }, undefined, false).then(() => undefined)
  }

  /** Hands the gateway a fresh token for the same user, without dropping the session. */
  refresh (token) {
    this._token = token
    return this._request({ type: 'refresh', token }, undefined, false).then(() => undefined)
  }

  /** Drops the connection and stays offline until `reconnect()` (requests are queued). */
  disconnect () {
    this._manual = true
    clearTimeout(this._retryTimer)
    if (this._ws) this._ws.close(1000)
    this._setState('offline')
  }

  /** Connects again now (after `disconnect()`, or to skip a backoff pause). */
  reconnect () {
    this._manual = false
    clearTimeout(this._retryTimer)
    if (this._ws) return Promise.resolve(this)
    this._setState('connecting')
    return this._open().catch(() => this)
  }

  /** Closes the client for good: the session ends on the node after its TTL. */
  close () {
    this._closed = true
    clearTimeout(this._retryTimer)
    clearTimeout(this._refreshTimer)
    if (this._ws) this._ws.close(1000)
    this._setState('closed')
  }
}

/** Connects to the gateway at `url` (`http(s)://host:port`, or its `ws(s)://…/ws`; default:
 *  this page's origin). Options: `token` (sent as `?token=`), `getToken` (an async function
 *  for a fresh token before the current one expires, and on reconnects), `maxQueue` (requests
 *  kept while offline, default 1000), `persist` (e.g. `sessionStorage`: a reloaded page
 *  resumes the same session). Resolves once the first welcome arrived. */
export async function connect (url, options = {}) {
  const client = new Client(url, options)
  return client._open()
}

/** GenBrowser's name for `connect`. */
export const start = connect

export default { connect, start, Client, FerryError }
