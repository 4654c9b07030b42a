// A Mesa 1.5 server (the real @cryb/mesa 1.5.8) for mesa-client's interop test.
// Run: npm ci && node server.js <port> [heartbeat interval ms]
// Listens on 127.0.0.1 only (port 0 picks a free one) and prints "MESA_NODE_READY <port>" when ready.
// Token "user:<id>" authenticates as <id> with user {id, via: "node"}; anything else is refused (close 1008).
// Every dispatch (op 0) is echoed back to its sender.
'use strict'

const http = require('http')
const { default: Mesa, Message } = require('@cryb/mesa')

const port = Number.parseInt(process.argv[2] || '0', 10)
const heartbeatInterval = Number.parseInt(process.argv[3] || '300', 10)

// An HTTP server of our own, so that Mesa's WebSocket server listens on 127.0.0.1 rather than every interface.
const httpServer = http.createServer()

const mesa = new Mesa({
  server: httpServer,
  heartbeat: { enabled: true, interval: heartbeatInterval, maxAttempts: 1 },
  reconnect: { enabled: true, interval: 200 },
  authentication: { timeout: 5000, sendUserObject: true, disconnectOnFail: true },
  gracefullyExit: false
})

mesa.on('connection', client => {
  client.authenticate((data, done) => {
    const token = data && typeof data.token === 'string' ? data.token : ''
    if (token.startsWith('user:')) {
      const id = token.slice('user:'.length)
      done(null, { id, user: { id, via: 'node' } })
    } else {
      done(new Error('invalid token'))
    }
  })
  client.on('message', message => {
    if (message.opcode === 0) client.send(new Message(0, message.data, message.type), true)
  })
  client.on('disconnect', code => console.log(`MESA_NODE_DISCONNECT ${code}`))
})

mesa.on('error', error => console.error(`mesa error: ${error && error.message}`))

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`MESA_NODE_READY ${httpServer.address().port}`)
})
