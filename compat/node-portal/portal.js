// A real Mesa 1.5 Portal (@cryb/mesa 1.5.8) for mesa-redis's portal interop test.
// Run: npm ci && node portal.js <redis-url> <namespace or -> <count>
// Prints "PORTAL_READY <id>" once its id is in the pool, then one JSON line per event it receives
// ({"type", "clientId", "message"?}), and exits 0 after <count> events (2 after 20 s without them).
'use strict'

const { Portal } = require('@cryb/mesa')

const [url, ns, countArg] = process.argv.slice(2)
const namespace = ns && ns !== '-' ? ns : undefined
const portal = new Portal(url, namespace ? { namespace } : {})
const pool = namespace ? `available_portals_pool_${namespace}` : 'available_portals_pool'
let left = Number.parseInt(countArg || '1', 10)

function print (event) {
  console.log(JSON.stringify(event))
  left -= 1
  if (left <= 0) process.exit(0)
}

const orNull = value => (value === undefined ? null : value)
for (const type of ['connection', 'authentication', 'disconnection']) {
  portal.on(type, clientId => print({ type, clientId: orNull(clientId) }))
}
portal.on('message', (message, clientId) => print({
  type: 'message',
  clientId: orNull(clientId),
  message: { op: message.opcode, d: message.data, t: orNull(message.type) }
}))
portal.on('error', error => console.error(`portal error: ${error && error.message}`))

// Portal registers itself asynchronously (SADD): ready once the pool holds its id.
// Checks overlap (each awaits Redis), so a flag makes sure READY is printed once.
let ready = false
const check = setInterval(async () => {
  if (!ready && (await portal.redis.sismember(pool, portal.id)) && !ready) {
    ready = true
    clearInterval(check)
    console.log(`PORTAL_READY ${portal.id}`)
  }
}, 20)

setTimeout(() => {
  console.error(`portal.js: timed out with ${left} event(s) missing`)
  process.exit(2)
}, 20000)
