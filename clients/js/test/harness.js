// What the package's tests run against: real `ferry` processes (the binary cargo builds,
// `target/debug/ferry` of the repository, or $FERRY_BIN), a TCP proxy that can make its
// connections go silent, and the `ws` package as Node's WebSocket.

import { spawn } from 'node:child_process'
import dgram from 'node:dgram'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { after, before } from 'node:test'
import { fileURLToPath } from 'node:url'
import * as Ferry from 'ferry-client'
import WebSocket from 'ws'

export { WebSocket }

// Whatever a test file started is stopped after it, also when a test failed half-way: an
// open client or a running `ferry` would keep the file's process alive.
const clients = new Set()
const children = new Set()
after(async () => {
  for (const client of clients) client.close()
  await Promise.all([...children].map(child => child.stop('SIGKILL')))
})

/** `Ferry.connect` with the `ws` package's WebSocket; the client is closed after the file. */
export async function connect (url, options = {}) {
  const client = await Ferry.connect(url, { WebSocket, ...options })
  clients.add(client)
  return client
}

export const FERRY = process.env.FERRY_BIN ||
  fileURLToPath(new URL('../../../target/debug/ferry', import.meta.url))

if (!existsSync(FERRY)) {
  throw new Error(`${FERRY} is missing: build it with \`cargo build -p ferry-node\` (or set FERRY_BIN)`)
}

/** True once `condition()` holds, false if it did not within `ms`. */
export async function until (condition, ms = 15000) {
  const end = Date.now() + ms
  while (!(await condition())) {
    if (Date.now() > end) return false
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return true
}

/** A port number free on the loopback interface over TCP and over UDP both (a node's
 *  gateway port is its WebTransport port too, and its listen port is UDP). */
export async function freePort () {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const server = net.createServer()
      server.on('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address()
        server.close(() => resolve(port))
      })
    })
    const udpFree = await new Promise(resolve => {
      const socket = dgram.createSocket('udp4')
      socket.on('error', () => resolve(false))
      socket.bind(port, '127.0.0.1', () => socket.close(() => resolve(true)))
    })
    if (udpFree) return port
  }
}

/** A child process whose standard output is read line by line. */
class Child {
  constructor (args) {
    this.process = spawn(FERRY, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: 'warn', HOME: '/nonexistent-home-for-ferry-tests' }
    })
    this.lines = []
    this.stderr = ''
    this.exited = new Promise(resolve => this.process.on('exit', (code, signal) => {
      children.delete(this)
      resolve({ code, signal })
    }))
    children.add(this)
    createInterface({ input: this.process.stdout }).on('line', line => this.lines.push(line))
    this.process.stderr.on('data', chunk => { this.stderr += chunk })
  }

  /** The first line (from `from` on) starting with `prefix`, waiting for it; its rest. */
  async field (prefix, from = 0) {
    const found = () => this.lines.slice(from).find(line => line.startsWith(prefix))
    if (!(await until(found, 30000))) {
      throw new Error(`no line "${prefix}…" from ferry; stderr: ${this.stderr}`)
    }
    return found().slice(prefix.length)
  }

  /** Stops the process with `signal` and waits for its end. */
  async stop (signal = 'SIGTERM') {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill(signal)
    return this.exited
  }
}

/** `ferry run` with `config` (TOML) on a data directory of its own (or `dataDir`): `url` is
 *  its gateway, `inbox` its inbox address. */
export async function startNode ({ config = '', dataDir, gatewayPort = 0, listenPort = 0 } = {}) {
  const dir = dataDir || mkdtempSync(join(tmpdir(), 'ferry-js-'))
  const configFile = join(dir, 'ferry.toml')
  writeFileSync(configFile, config)
  const child = new Child([
    'run', '--data', dir, '--config', configFile,
    '--gateway', `127.0.0.1:${gatewayPort}`, '--listen', `127.0.0.1:${listenPort}`
  ])
  const inbox = await child.field('inbox address: ')
  const gateway = await child.field('gateway: ws://')
  const node = {
    child,
    dir,
    inbox,
    url: `http://${gateway.replace(/\/ws$/, '')}`,
    /** The lines the inbox printed (one per message). */
    printed: () => child.lines.filter(line => !/^(node id|listening on|inbox address|metrics|health|gateway|webtransport): /.test(line)),
    stop: (signal) => child.stop(signal),
    remove: () => rmSync(dir, { recursive: true, force: true })
  }
  return node
}

/** `ferry run` (with `config`) and `ferry listen`, started before the file's tests and stopped
 *  after them: `scene.node`, `scene.listener`. */
export function nodeAndListener (config = '') {
  const scene = {}
  before(async () => {
    scene.node = await startNode({ config })
    scene.listener = await startListener()
  })
  after(async () => {
    await scene.listener.stop()
    await scene.node.stop()
    scene.node.remove()
  })
  return scene
}

/** `ferry listen --json`: its address, and the messages it printed ({from, payload, id}). */
export async function startListener () {
  const child = new Child(['listen', '--json'])
  if (!(await until(() => child.lines.length > 0, 30000))) throw new Error(`ferry listen: ${child.stderr}`)
  return {
    address: child.lines[0],
    messages: () => child.lines.slice(1).map(line => JSON.parse(line)),
    stop: () => child.stop()
  }
}

/** `ferry send ADDRESS MESSAGE`; resolves with its exit code. */
export function ferrySend (address, message) {
  const child = new Child(['send', address, message])
  return child.exited.then(({ code }) => code)
}

/** A sessionStorage stand-in. */
export class MemoryStorage {
  constructor () { this.items = new Map() }
  getItem (key) { return this.items.has(key) ? this.items.get(key) : null }
  setItem (key, value) { this.items.set(key, String(value)) }
}

/** A TCP proxy to `port`; `freeze()` makes every connection it carries go silent (no more
 *  bytes either way, nothing closed), as a network that vanished; later ones work.
 *  `retarget(port)` sends later connections to another port (a load balancer moving a
 *  browser to another node). */
export async function startProxy (port) {
  let target = port
  let generation = 0
  const sockets = new Set()
  const server = net.createServer(client => {
    const mine = generation
    const upstream = net.connect(target, '127.0.0.1')
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => sockets.delete(socket))
    }
    const pipe = (from, to) => from.on('data', chunk => {
      if (generation === mine) to.write(chunk)
    })
    pipe(client, upstream)
    pipe(upstream, client)
    client.on('close', () => { if (generation === mine) upstream.destroy() })
    upstream.on('close', () => { if (generation === mine) client.destroy() })
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    freeze: () => { generation += 1 },
    retarget: (port) => { target = port },
    close: () => {
      for (const socket of sockets) socket.destroy()
      server.close()
    }
  }
}

/** Debian's `nats-server -js` on a free loopback port (`-p -1`), its JetStream store in a
 *  temporary directory: `url` (`nats://127.0.0.1:PORT`), `stop()`. */
export async function startNats () {
  const server = '/usr/sbin/nats-server'
  if (!existsSync(server)) throw new Error(`${server} is missing: apt-get install nats-server`)
  const dir = mkdtempSync(join(tmpdir(), 'ferry-js-nats-'))
  const child = spawn(server, ['-a', '127.0.0.1', '-p', '-1', '-js', '-sd', dir], {
    stdio: ['ignore', 'ignore', 'pipe']
  })
  const exited = new Promise(resolve => child.on('exit', resolve))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
    rmSync(dir, { recursive: true, force: true })
  }
  children.add({ stop })
  let log = ''
  const port = await new Promise((resolve, reject) => {
    let port = null
    const lines = createInterface({ input: child.stderr })
    lines.on('line', line => {
      log += line + '\n'
      const found = /Listening for client connections on [^:]+:(\d+)/.exec(line)
      if (found) port = Number(found[1])
      if (port !== null && line.includes('Server is ready')) resolve(port)
    })
    child.on('exit', () => reject(new Error(`nats-server exited: ${log}`)))
  })
  return { url: `nats://127.0.0.1:${port}`, stop }
}
