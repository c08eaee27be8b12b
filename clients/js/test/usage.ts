// A typed usage of the package, checked by `npm run typecheck` (tsc --noEmit): the
// declarations must describe the API as the README uses it. Never run.

import * as Ferry from 'ferry-client'
import type { Client, Message, State, Target } from 'ferry-client'

export async function usage (storage: Ferry.Storage): Promise<void> {
  const client: Client = await Ferry.connect('http://127.0.0.1:8080', {
    token: 'secret',
    getToken: async () => 'fresh',
    maxQueue: 100,
    persist: storage,
    heartbeatTimeout: 8000,
    connectTimeout: 15000
  })
  const address: string = client.address
  const state: State = client.state
  const stop: () => void = client.on('state', (next: State) => { console.log(next, state) })
  stop()
  client.on('close', ({ code, reason }) => console.log(code === Ferry.CLOSE.RATE, reason))
  client.on('expired', ({ previous, address }) => console.log(previous, address))
  client.mailbox.setHandler(async (message: Message) => {
    if (message.encoding === 'bytes') console.log((message.data as Uint8Array).length)
    if (Ferry.sameAddress(message.from, address)) await client.send(message.from, { pong: true })
  })
  const next: Message = await client.mailbox.receive({ timeout: 1000 })
  console.log(next.id, next.channel, Ferry.addressKey(next.from))
  const targets: Target[] = [address, { channel: 'room' }, { user: 'bob' }, { session: 's' }]
  for (const to of targets) await client.send(to, 'text')
  await client.send(address, new Uint8Array([1, 2]))
  const reply: unknown = await client.call('NODEID@127.0.0.1:4433/shout', 'hi', { timeout: 5000 })
  console.log(reply, client.limits.max_payload_size, client.error?.code)
  await client.join('room')
  await client.leave('room')
  await client.ping()
  await client.refresh('token')
  const narrow: string = await client.attenuate({ expires: new Date(Date.now() + 3600000), max: 10 })
  const handed: string = await Ferry.attenuate(narrow, { only: 'NODEID', rate: { messages: 1, per: 60 }, service: 'echo' })
  const granted: Ferry.Grant = await client.grant({ expires: 1800000000 })
  await client.attenuate(granted.address, { max: 1 })
  await client.revoke(granted.grant)
  console.log(handed)
  const service = 'NODEID@127.0.0.1:4433/files'
  const uploaded: Ferry.DataResult = await client.sendData(service, new Blob(['bytes']), {
    request: { op: 'upload' },
    onProgress: ({ sent, total }: Ferry.DataProgress) => console.log(sent, total)
  })
  console.log(uploaded.reply, uploaded.sent)
  const download: Ferry.DataStream = client.recvData(service, { request: { op: 'download' }, signal: new AbortController().signal })
  for (const reader = download.readable.getReader(); ;) {
    const { value, done } = await reader.read()
    if (done) break
    console.log(value.length)
  }
  console.log((await download.done).received, client.data(service, { body: 'text' }).done)
  client.onData(async (meta: Ferry.IncomingData, readable: ReadableStream<Uint8Array>) => {
    let bytes = 0
    for (const reader = readable.getReader(); ;) {
      const { value, done } = await reader.read()
      if (done) break
      bytes += value.length
    }
    return { from: meta.from, bytes }
  })
  client.disconnect()
  const again: Client = await client.reconnect()
  again.close()
  try {
    await Ferry.start()
  } catch (error) {
    if (error instanceof Ferry.FerryError && error.code === 'unauthorized') console.log(error.message)
  }
}
