// Type declarations of ferry.js, the client of the ferry gateway (docs/GATEWAY.md §11).

/** Where a message goes: a capability address (`ferry1…`), a channel, a user or a session. */
export type Target = string | { channel: string } | { user: string } | { session: string }

/** A message payload: a string (sent as its UTF-8 text), bytes, or any other JSON value
 *  (sent as its JSON text). */
export type Payload = string | ArrayBuffer | ArrayBufferView | number | boolean | null | object

/** How a received payload was read: a JSON text (`data` is its value), other UTF-8 text
 *  (`data` is the string), or other bytes (`data` is a Uint8Array). */
export type Encoding = 'json' | 'text' | 'bytes'

/** A message delivered to this session. */
export interface Message {
  /** Increasing within the session. */
  id: number
  /** The sender's address, without dial hints: reply with `client.send(message.from, …)`,
   *  compare with `sameAddress`. */
  from: string
  /** The payload: a JSON value, a string, or a Uint8Array (see `encoding`). */
  data: unknown
  encoding: Encoding
  /** Whether `encoding` is 'bytes'. */
  binary: boolean
  /** Set when it was published to a channel. */
  channel?: string
  /** In a cluster: the epoch of the cluster's history the publication is in. */
  epoch?: string
  /** In a cluster: the publication's offset in that history (increasing within a channel). */
  offset?: number
  /** Set when it was sent to every session of a user. */
  user?: string
  /** Set when the application embedding the gateway pushed it. */
  push?: true
}

/** The stable codes of a FerryError: the gateway's error codes (GATEWAY.md §6.2) and the
 *  client's own. */
export type ErrorCode =
  | 'bad_request' | 'unknown_type' | 'too_large' | 'forbidden' | 'no_such_mailbox'
  | 'forged' | 'expired' | 'wrong_node' | 'unreachable' | 'timeout' | 'outbox_full'
  | 'no_such_service' | 'refused' | 'failed' | 'no_such_session' | 'node_closed'
  | 'store_failed' | 'unauthorized' | 'unknown_outcome' | 'internal'
  | 'unavailable' | 'closed' | 'ended' | 'protocol' | 'taken_over' | 'queue_full'
  | 'no_websocket' | 'mailbox_has_handler' | 'mailbox_receiving'
  | 'revoked' | 'caveat' | 'exhausted' | 'no_webcrypto'
  | 'unsupported' | 'offline' | 'interrupted' | 'cancelled'

/** An error with a stable code. */
export class FerryError extends Error {
  constructor (code: ErrorCode, message?: string)
  code: ErrorCode
}

/** The gateway's close codes (GATEWAY.md §8). */
export const CLOSE: {
  readonly NORMAL: 1000
  readonly GOING_AWAY: 1001
  readonly ABNORMAL: 1006
  readonly TOO_BIG: 1009
  readonly IDLE: 4000
  readonly AGE: 4001
  readonly AUTH_EXPIRED: 4002
  readonly ENDED: 4003
  readonly SLOW: 4008
  readonly RATE: 4029
  readonly PROTOCOL: 4400
  readonly UNAUTHORIZED: 4401
  readonly FORBIDDEN: 4403
  readonly TAKEN_OVER: 4409
}

export interface Mailbox {
  /** The next message; rejects with FerryError('timeout') after `timeout` ms. */
  receive (options?: { timeout?: number }): Promise<Message>
  /** Calls `handler` for every message, in order. Not together with `receive`. */
  setHandler (handler: (message: Message) => void | Promise<void>): void
}

/** `connecting`: a connection is being opened; `open`: connected (welcomed); `offline`: no
 *  connection, another attempt follows (after a pause, when the browser is back online, or
 *  at `reconnect()` after `disconnect()`); `closed`: stopped for good (`client.error`). */
export type State = 'connecting' | 'open' | 'offline' | 'closed'

/** The limits a gateway announces (GATEWAY.md §4). */
export interface Limits {
  max_message_size: number
  max_payload_size: number
  rate_limit: number
  rate_window_ms: number
  idle_timeout_ms: number
  ping_interval_ms: number
  session_ttl_ms: number
}

export interface Welcome {
  session: string
  user: string
  address: string
  node: string
  resume: string
  resumed: boolean
  recovered: boolean
  expired: boolean
  pending: number
  auth_expires: number | null
  limits: Limits
  config: Record<string, unknown>
}

/** Something like `sessionStorage`. */
export interface Storage {
  getItem (key: string): string | null
  setItem (key: string, value: string): void
}

/** One channel of a 'rejoined' event. */
export interface Rejoined {
  channel: string
  /** Every publication of the channel since the last one received is (or will be) delivered. */
  recovered: boolean
  /** Publications the history delivered again. */
  count: number
  error?: FerryError
}

export interface Options {
  /** A credential, sent as `?token=`. */
  token?: string
  /** Gives a fresh token: on reconnects, before `auth_expires`, and after a refusal (which is
   *  tried again only if it gives another token). */
  getToken?: () => Promise<string> | string
  /** Requests made and not answered yet, at most (default 10000); beyond, 'queue_full'. */
  maxQueue?: number
  /** Keeps the session (resume token, cursor, request refs) across page loads. */
  persist?: Storage
  /** A connection silent this long (ms) is given up and replaced (default: the gateway's
   *  `ping_interval_ms` + 3000). */
  heartbeatTimeout?: number
  /** `connect` gives up ('unavailable') after trying this long (ms; default 15000). */
  connectTimeout?: number
  /** The WebSocket class (default: the global one), e.g. the `ws` package's in Node. */
  WebSocket?: unknown
  /** The WebTransport class (default: the global one, if any); `null`: WebSocket only. */
  WebTransport?: unknown
  /** `'websocket'`: never WebTransport. Default `'auto'`: WebTransport when the runtime has
   *  it and the node offers it (`GET /webtransport`), else WebSocket. */
  transport?: 'auto' | 'websocket'
  /** How long WebTransport may take to bring a welcome before the client falls back to
   *  WebSocket for good (ms). Default 3000. */
  webTransportTimeout?: number
  /** The fetch function for `GET /webtransport` (default: the global one). */
  fetch?: unknown
  /** When the session is gone and a new one takes its place ('expired'), join its channels
   *  again and recover each from the last publication received, dropping publications that
   *  come twice ('rejoined' tells how it went). Default true. */
  rejoin?: boolean
}

/** What a data stream's body may be (GATEWAY.md §13.11). */
export type DataBody = Blob | ReadableStream<Uint8Array> | ArrayBuffer | ArrayBufferView | string

/** Progress of a data stream: bytes uploaded (taken by the network), downloaded, and the
 *  body's size when known. */
export interface DataProgress {
  sent: number
  received: number
  total?: number
}

/** The service's answer to a data stream. */
export interface DataResult {
  /** The service's reply (a JSON value, a string, or a Uint8Array: see `encoding`). */
  reply: unknown
  encoding: Encoding
  /** Bytes the service took of the upload, and sent. */
  sent: number
  received: number
}

export interface DataOptions {
  /** The request object for the service (JSON or text, as `send` encodes it). */
  request?: Payload
  onProgress?: (progress: DataProgress) => void
  signal?: AbortSignal
}

/** What comes with a peer's data for the session (GATEWAY.md §13.12). */
export interface IncomingData {
  /** The sender's node id. */
  from: string
  /** Its metadata: a JSON value, a string, or a Uint8Array (see `encoding`). */
  data: unknown
  encoding: Encoding
}

/** A data stream under way: the service's data, and its answer. */
export interface DataStream {
  readable: ReadableStream<Uint8Array>
  done: Promise<DataResult>
}

export class Client {
  /** The transport of the current (or last) connection, `null` before the first welcome. */
  transport: 'webtransport' | 'websocket' | null
  constructor (url?: string, options?: Options)
  /** This session's capability address. */
  address: string
  /** The configuration object from the node. */
  config: Record<string, any>
  session: string
  user: string
  node: string
  state: State
  /** Why the client stopped (state 'closed'), else null. */
  error: FerryError | null
  limits: Limits
  /** Whether the last connection resumed the session, and recovered everything missed. */
  resumed: boolean
  recovered: boolean
  /** Whether the last connection found the session gone (a new address, see 'expired'). */
  expired: boolean
  mailbox: Mailbox
  on (event: 'state', listener: (state: State) => void): () => void
  on (event: 'welcome', listener: (welcome: Welcome) => void): () => void
  on (event: 'expired', listener: (change: { previous: string, address: string }) => void): () => void
  /** After 'expired' (with `rejoin`): the old session's channels joined again, each recovered
   *  from the last publication received (`recovered`: nothing missed; `count`: delivered
   *  again; `error`: the join or recover failed). */
  on (event: 'rejoined', listener: (change: { previous: string, address: string, channels: Rejoined[] }) => void): () => void
  on (event: 'close', listener: (close: { code: number, reason: string }) => void): () => void
  /** `gateway_join_leave`: a session joined or left a channel this one is a member of. */
  on (event: 'join' | 'leave', listener: (event: { channel: string, session: string, user: string }) => void): () => void
  send (to: Target, message: Payload): Promise<void>
  call (to: string, request: Payload, options?: { timeout?: number }): Promise<unknown>
  join (channel: string): Promise<void>
  leave (channel: string): Promise<void>
  /** Who is in a channel (on every node of a cluster). */
  presence (channel: string): Promise<Array<{ session: string, user: string }>>
  /** In a cluster: the channel's publications after `offset` of history `epoch` again. */
  recover (channel: string, epoch: string, offset: number): Promise<{ recovered: boolean, count: number }>
  ping (): Promise<void>
  refresh (token: string): Promise<void>
  /** Narrows this session's address (or `address`) offline: see `attenuate`. */
  attenuate (options?: Attenuation): Promise<string>
  attenuate (address: string, options?: Attenuation): Promise<string>
  /** An address of this session's mailbox under a new grant, and the grant's id. */
  grant (options?: { expires?: Date | number }): Promise<Grant>
  /**
   * Revokes a grant of this session's mailbox; resolves once the revocation is stored.
   * Conversations open under it end (their unacknowledged messages fail with `revoked`).
   * Rejected with `forbidden` beyond the gateway's `gateway_max_revocations` (default 64).
   */
  revoke (grant: string): Promise<void>
  disconnect (): void
  reconnect (): Promise<Client>
  close (): void
  /** A data stream with a service over WebTransport (GATEWAY.md §13.11): uploads `body`,
   *  gives the service's data and its answer. FerryError 'unsupported' over WebSocket. */
  data (to: string, options?: DataOptions & { body?: DataBody }): DataStream
  /** Uploads `body` to the service; resolves once the service read all of it and answered. */
  sendData (to: string, body: DataBody, options?: DataOptions): Promise<DataResult>
  /** Downloads from the service. */
  recvData (to: string, options?: DataOptions): DataStream
  /** Takes peers' data for this session (WebTransport): the handler's result (JSON or text)
   *  answers the sender; a rejection fails it. */
  onData (handler: (meta: IncomingData, readable: ReadableStream<Uint8Array>) => unknown): void
}

export function connect (url?: string, options?: Options): Promise<Client>
export const start: typeof connect
/** What `attenuate` narrows (docs/PROTOCOL.md §4.11); the caveats are appended in this order. */
export interface Attenuation {
  /** Void at and after this time (a Date, or seconds since the epoch): earlier than the
   *  address's expiry. */
  expires?: Date | number
  /** At most this many messages, counted together with every address derived from the result. */
  max?: number
  /** At most `messages` messages per `per` seconds. */
  rate?: { messages: number, per: number }
  /** Conversations with this service only (no messages). */
  service?: string
  /** Only this node (its id) may use the address: a handoff. */
  only?: string
}

/** A grant of the session's mailbox (GATEWAY.md §5.9). */
export interface Grant {
  /** An address under the grant (`ferry2…`). */
  address: string
  /** The grant's id, 16 hex digits: what `revoke` takes. */
  grant: string
}

/** Derives a narrower `ferry2` address from `address` offline (HMAC chain with WebCrypto). */
export function attenuate (address: string, options?: Attenuation): Promise<string>
/** Whether two addresses name the same mailbox, whatever dial hints they carry. */
export function sameAddress (a: string, b: string): boolean
/** A string equal for addresses of the same mailbox: a key for maps. */
export function addressKey (address: string): string
declare const _default: {
  connect: typeof connect
  start: typeof connect
  sameAddress: typeof sameAddress
  addressKey: typeof addressKey
  attenuate: typeof attenuate
  Client: typeof Client
  FerryError: typeof FerryError
  CLOSE: typeof CLOSE
}
export default _default

/** Message ids taken in any order, with the last id up to which all were taken (the cursor
 *  over WebTransport, where messages of different sources come on different streams). */
export class ContiguousIds {
  constructor (next?: number)
  /** The next id expected. */
  next: number
  /** Expects `next` first; forgets every id taken. */
  reset (next: number): void
  /** Expects `next` first, keeping the ids taken at or above it. */
  rebase (next: number): void
  /** Takes `id`: true if it is new. */
  take (id: number): boolean
  /** The last id up to which every id was taken, or null. */
  last (): number | null
  /** Ids taken above the contiguous run. */
  readonly pending: number
}
