// The real Mesa 1.5 Dispatcher (@cryb/mesa 1.5.8), driven line by line, for mesa-redis's compatibility test.
// Run: npm ci && node dispatcher.js <redis-url> <namespace or ->
// Prints "READY" once connected; then each line on stdin is one dispatch:
//   {"message": {"op":0,"d":{...},"t":"T"}, "to": ["id"] | ["*"], "excluding"?: ["id"]}
//   {"event": "DISCONNECT_CLIENT", "to": [...]}
// and "SENT <n>" is printed once Redis took it. Exits 0 when stdin closes (2 after 20 s).
'use strict'

const readline = require('readline')
const { Dispatcher, DispatchEvent, Message } = require('@cryb/mesa')

const [url, ns] = process.argv.slice(2)
const namespace = ns && ns !== '-' ? ns : undefined
const dispatcher = new Dispatcher(url, { namespace })

setTimeout(() => {
  console.error('dispatcher.js: timed out')
  process.exit(2)
}, 20000)

let sent = 0
dispatcher.publisher.on('ready', () => console.log('READY'))
const lines = readline.createInterface({ input: process.stdin })
lines.on('line', async line => {
  const step = JSON.parse(line)
  const event = step.event
    ? new DispatchEvent(step.event)
    : new Message(step.message.op, step.message.d, step.message.t)
  dispatcher.dispatch(event, step.to, step.excluding)
  // The Dispatcher publishes without a promise: a PING after it on the same connection answers once
  // Redis has run the PUBLISH.
  await dispatcher.publisher.ping()
  sent += 1
  console.log(`SENT ${sent}`)
})
lines.on('close', () => process.exit(0))
