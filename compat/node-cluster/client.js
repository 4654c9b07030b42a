// The real Mesa 1.5 Node client (@cryb/mesa 1.5.8): connects, authenticates and prints what it receives.
// Run: npm ci && node client.js <ws-url> <token> <count>
// Prints "AUTHENTICATED", then one JSON line {op, d, t, s} per message (s: the client's sequence), and exits
// 0 after <count> messages (2 after 20 s).
'use strict'

const { Client } = require('@cryb/mesa')

const [url, token, count] = process.argv.slice(2)
let left = Number(count)

setTimeout(() => {
  console.error('client.js: timed out')
  process.exit(2)
}, 20000)

const client = new Client(url, { autoConnect: false })
client.on('error', error => console.error(`client error: ${error && error.message}`))
client.on('message', message => {
  console.log(JSON.stringify({ op: message.opcode, d: message.data, t: message.type, s: message.sequence }))
  left -= 1
  if (left <= 0) process.exit(0)
})
client.connect().then(async () => {
  await client.authenticate({ token })
  console.log('AUTHENTICATED')
})
