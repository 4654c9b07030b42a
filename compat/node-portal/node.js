// A real Mesa 1.5 node (@cryb/mesa 1.5.8) with Redis and portal on, and a 1.5 client of its own, for
// mesa-redis's portal interop test.
// Run: npm ci && node node.js <redis-url> <namespace or ->
// Waits until a portal is in the pool, then a client connects, authenticates (as "alice"), sends
// {op:0, t:"SAY", d:{text:"hi"}}, and is disconnected by the server (1000): the node publishes connection,
// authentication, message and disconnection to the portal. Prints "NODE_DONE" and exits 0 (2 on a timeout).
'use strict'

const http = require('http')
const { default: Mesa, Client, Message } = require('@cryb/mesa')

const [url, ns] = process.argv.slice(2)
const namespace = ns && ns !== '-' ? ns : undefined

const httpServer = http.createServer()
const mesa = new Mesa({
  server: httpServer,
  redis: url,
  namespace,
  portal: { enabled: true },
  authentication: { timeout: 5000 },
  gracefullyExit: false
})

mesa.on('connection', client => {
  client.authenticate((data, done) => done(null, { id: 'alice', user: { id: 'alice' } }))
  client.on('message', message => {
    if (message.type === 'SAY') client.disconnect(1000)
  })
})
mesa.on('disconnection', () => {
  // The node publishes the disconnection right after this event; give it time to leave.
  setTimeout(() => {
    console.log('NODE_DONE')
    process.exit(0)
  }, 300)
})
mesa.on('error', error => console.error(`mesa error: ${error && error.message}`))

setTimeout(() => {
  console.error('node.js: timed out')
  process.exit(2)
}, 20000)

function waitForPortal () {
  return new Promise(resolve => {
    const check = setInterval(() => {
      if (mesa.portals.length > 0) {
        clearInterval(check)
        resolve()
      }
    }, 20)
  })
}

httpServer.listen(0, '127.0.0.1', async () => {
  await waitForPortal()
  const client = new Client(`ws://127.0.0.1:${httpServer.address().port}`, { autoConnect: false })
  client.on('error', error => console.error(`client error: ${error && error.message}`))
  await client.connect()
  await client.authenticate({ token: 'alice' })
  client.send(new Message(0, { text: 'hi' }, 'SAY'))
})
