// Type declarations of ferry.js, the browser client of the ferry gateway (docs/GATEWAY.md).

/** Where a message goes: a capability address (`ferry1…`), a channel, a user or a session. */
export type Target = string | { channel: string } | { user: string } | { session: string }

/** A message payload: any JSON value, or bytes. */
export type Payload = unknown | ArrayBuffer | ArrayBufferView

/** A message delivered to this session. */
export interface Message {
  /** Increasing within the session. */
  id: number
  /** The sender's address: reply with `client.send(message.from, …)`. */
  from: string
  /** The payload: a JSON value, or a Uint8Array when `binary`. */
  data: unknown
  /** Whether the payload was not JSON (it is a Uint8Array). */
  binary: boolean
  /** Set when it was published to a channel. */
  channel?: string
  /** Set when it was sent to every session of a user. */
  user?: string
  /** Set when the application embedding the gateway pushed it. */
  push?: true
}

/** An error with a stable code: the gateway's (`no_such_mailbox`, `timeout`, `forbidden`…)
 *  or the client's (`connect_failed`, `closed`, `offline_queue_full`, `mailbox_has_handler`,
 *  `mailbox_receiving`). */
export class FerryError extends Error {
  code: string
}

export interface Mailbox {
  /** The next message; rejects with FerryError('timeout') after `timeout` ms. */
  receive (options?: { timeout?: number }): Promise<Message>
  /** Calls `handler` for every message, in order. Not together with `receive`. */
  setHandler (handler: (message: Message) => void | Promise<void>): void
}

export type State = 'connecting' | 'open' | 'offline' | 'closed'

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
  limits: Record<string, number>
  config: Record<string, unknown>
}

export class Client {
  /** This browser's capability address. */
  address: string
  /** The configuration object from the node. */
  config: Record<string, any>
  session: string
  user: string
  node: string
  state: State
  /** Whether the last connection resumed the session, and recovered everything missed. */
  resumed: boolean
  recovered: boolean
  mailbox: Mailbox
  on (event: 'state', listener: (state: State) => void): () => void
  on (event: 'welcome', listener: (welcome: Welcome) => void): () => void
  on (event: 'expired', listener: (change: { previous: string, address: string }) => void): () => void
  on (event: 'close', listener: (close: { code: number, reason: string }) => void): () => void
  send (to: Target, message: Payload): Promise<void>
  call (to: string, request: Payload, options?: { timeout?: number }): Promise<unknown>
  join (channel: string): Promise<void>
  leave (channel: string): Promise<void>
  refresh (token: string): Promise<void>
  disconnect (): void
  reconnect (): Promise<Client>
  close (): void
}

export interface Options {
  token?: string
  getToken?: () => Promise<string> | string
  maxQueue?: number
  persist?: Storage
}

export function connect (url?: string, options?: Options): Promise<Client>
export const start: typeof connect
declare const _default: { connect: typeof connect, start: typeof connect, Client: typeof Client, FerryError: typeof FerryError }
export default _default
