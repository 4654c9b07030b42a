// The conformance contract on the real @cryb/mesa 1.5.8 server, for bench/compare.sh.
//
// Run: (cd bench/node && npm ci && PORT=4300 node server.js)
//
// Listens on 127.0.0.1:$PORT (default 4000), path /. Hello advertises heartbeats every 1000 ms (2 missed
// beats tolerated), reconnect 500 ms, authentication timeout 2000 ms, rules ["sends_user_object"] — the same
// timings as the mesa-conformance binary. `{"token":"user:<id>"}` authenticates as <id> and is answered
// op 22 {"id","name":"User <id>"}; any other token closes with 1008. Dispatches: ECHO back to the sender,
// BROADCAST to every connection (mesa.send without recipients), SEND_TO {to, excluding?, payload} as DIRECT
// to those users (mesa.send with recipients and exclusions). Exits on SIGINT/SIGTERM (Mesa's own handler).
// REDIS_URL (optional, e.g. redis://127.0.0.1:6379): Mesa 1.5's own `redis` option, so that several of these
// processes on one Redis are one gateway (every send goes through the `ws` channel, which every node
// receives); REDIS_NAMESPACE sets Mesa's `namespace` (default: none). For bench/compare.sh --cluster.
'use strict'

const http = require('http')
const { default: Mesa, Message } = require('@cryb/mesa')

const port = Number(process.env.PORT || 4000)
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`PORT must be a port number, got ${process.env.PORT}`)
  process.exit(2)
}

// Mesa attaches its WebSocket server to this HTTP server, so that it listens on loopback only.
const server = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' })
  res.end('WebSocket upgrade required\n')
})

const redis = process.env.REDIS_URL || undefined
const namespace = process.env.REDIS_NAMESPACE || undefined

const mesa = new Mesa({
  server,
  redis,
  namespace,
  path: '/',
  heartbeat: { enabled: true, interval: 1000, maxAttempts: 2 },
  reconnect: { enabled: true, interval: 500 },
  authentication: { timeout: 2000, sendUserObject: true, disconnectOnFail: true }
})

let errors = 0
// Without a listener, an 'error' event would throw and end the process.
mesa.on('error', () => { errors += 1 })

mesa.on('connection', client => {
  client.on('error', () => { errors += 1 })

  client.authenticate((data, done) => {
    const token = data && typeof data.token === 'string' ? data.token : ''
    const id = token.startsWith('user:') ? token.slice('user:'.length) : ''
    if (!id) return done(new Error('invalid token'))
    done(null, { id, user: { id, name: `User ${id}` } })
  })

  client.on('message', message => {
    const { data, type } = message
    switch (type) {
      case 'ECHO':
        // sendDirectly: to this connection only (without it Mesa routes by user id).
        client.send(new Message(0, data, 'ECHO'), true)
        break
      case 'BROADCAST':
        mesa.send(new Message(0, data, 'BROADCAST'))
        break
      case 'SEND_TO':
        if (data && Array.isArray(data.to) && Object.prototype.hasOwnProperty.call(data, 'payload')) {
          const excluding = Array.isArray(data.excluding) ? data.excluding : undefined
          mesa.send(new Message(0, data.payload, 'DIRECT'), data.to, excluding)
        }
        break
      default:
        break
    }
  })
})

server.listen(port, '127.0.0.1', () => {
  const { address, port: bound } = server.address()
  console.error(`@cryb/mesa 1.5.8 listening on ws://${address}:${bound}/${redis ? ' (with Redis)' : ''}`)
})
