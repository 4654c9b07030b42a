// A real Mesa 1.5 node (@cryb/mesa 1.5.8) with Redis and sync on, for mesa-redis's mixed-cluster test.
// Run: npm ci && node node.js <redis-url> <namespace or ->
// Token "user:<id>" authenticates as <id>. A client's op 0 SEND_TO {to: [ids], payload} becomes
// mesa.send({op:0, d: payload, t:"DIRECT"}, to), as our conformance app does. Prints "READY <port>";
// exits 2 after 30 s.
'use strict'

const http = require('http')
const { default: Mesa, Message } = require('@cryb/mesa')

const [url, ns] = process.argv.slice(2)
const namespace = ns && ns !== '-' ? ns : undefined

const httpServer = http.createServer()
const mesa = new Mesa({
  server: httpServer,
  redis: url,
  namespace,
  sync: { enabled: true },
  authentication: { timeout: 5000 },
  gracefullyExit: false
})

mesa.on('connection', client => {
  client.authenticate((data, done) => {
    const token = (data && data.token) || ''
    if (!token.startsWith('user:')) return done(new Error('invalid token'))
    const id = token.slice('user:'.length)
    done(null, { id, user: { id } })
  })
  client.on('message', message => {
    if (message.type === 'SEND_TO') {
      mesa.send(new Message(0, message.data.payload, 'DIRECT'), message.data.to)
    }
  })
})
mesa.on('error', error => console.error(`mesa error: ${error && error.message}`))

setTimeout(() => {
  console.error('node.js: timed out')
  process.exit(2)
}, 30000)

httpServer.listen(0, '127.0.0.1', () => console.log(`READY ${httpServer.address().port}`))
