#!/usr/bin/env node
// Runs the real Mesa 1.5 Node client (@cryb/mesa 1.5.8) against a Mesa server and checks that it works.
//
// Usage: node check-client.js <url> <auth> [options]
//
//   <url>    the server's WebSocket URL, e.g. ws://127.0.0.1:4000/
//   <auth>   the authentication payload: a JSON object (sent as op 2's d, e.g. '{"token":"user:alice"}'),
//            or a bare token T, meaning {"token": T}
//
// Options:
//   --expect-user JSON|any     the user object op 22 must carry, compared exactly. Default: for a token
//                              "user:<id>", {"id":"<id>","name":"User <id>"} (the conformance app); otherwise
//                              "any", which accepts any JSON object
//   --echo-type T|none         dispatch type sent for the echo check (default ECHO); none skips it
//   --echo-reply-type T        dispatch type expected back, carrying the same d (default: the --echo-type)
//   --broadcast-type T|none    dispatch type sent for the broadcast check (default BROADCAST); none skips it
//   --broadcast-reply-type T   dispatch type expected back, same d (default: the --broadcast-type)
//   --expect-pushed T          after the other checks, send one dispatch (--send-type) and then wait for a
//                              dispatch of type T (any d) that the server pushes on its own, e.g. a backend's
//                              POST /api/send. Only a T that arrives after the sent dispatch counts, so the
//                              backend must push after that (for example repeatedly). Default (or none): no
//                              push check
//   --send-type T|none         dispatch type the push check sends first (default CLIENT_HELLO); its d is
//                              {"check":"send","nonce":...}; none sends nothing and only waits for the push
//   --beats N                  heartbeat intervals to stay connected before authenticating (default 6);
//                              at least N heartbeats must arrive and be answered; 0 skips the check
//   --timeout MS               time limit for the whole run (default 20000)
//   --verbose                  log every frame the server sends to stderr
//
// Steps: connect; wait for the client's 'connected' event and the server's Hello; stay connected N + 1/2
// heartbeat intervals (the interval is the Hello's c_heartbeat_interval) while the client answers every op 1,
// checking that no op 1 reports missed beats and that the connection is not dropped; authenticate (op 2 -> op 22)
// and check the user object; send the echo dispatch and receive it back; send the broadcast and receive it;
// with --expect-pushed, send the --send-type dispatch and wait for a pushed dispatch of type T.
//
// Output: on success one JSON line on stdout ({"ok":true,...}) and exit status 0. On any failure, disconnection
// or timeout: a message on stderr, a JSON line {"ok":false,"phase":...,"error":...} on stdout, exit status 1.
// Bad arguments exit with status 2. The process always exits by itself: the 1.5 client's disconnect() does not
// stop its reconnection timer, so this script ends with process.exit.
'use strict'

const { isDeepStrictEqual } = require('util')
const { Client, Message } = require('@cryb/mesa')

const USAGE = 'usage: node check-client.js <url> <auth> [--expect-user JSON|any] [--echo-type T] ' +
  '[--echo-reply-type T] [--broadcast-type T|none] [--broadcast-reply-type T] [--expect-pushed T] ' +
  '[--send-type T|none] [--beats N] [--timeout MS] [--verbose]'

function usage (message) {
  process.stderr.write(`check-client: ${message}\n${USAGE}\n`)
  process.exit(2)
}

function parseArgs (argv) {
  const positional = []
  const options = {
    expectUser: undefined,
    echoType: 'ECHO',
    echoReplyType: undefined,
    broadcastType: 'BROADCAST',
    broadcastReplyType: undefined,
    expectPushed: undefined,
    sendType: 'CLIENT_HELLO',
    beats: 6,
    timeout: 20000,
    verbose: false
  }
  const valued = {
    '--expect-user': 'expectUser',
    '--echo-type': 'echoType',
    '--echo-reply-type': 'echoReplyType',
    '--broadcast-type': 'broadcastType',
    '--broadcast-reply-type': 'broadcastReplyType',
    '--expect-pushed': 'expectPushed',
    '--send-type': 'sendType',
    '--beats': 'beats',
    '--timeout': 'timeout'
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--verbose') {
      options.verbose = true
    } else if (arg === '--help' || arg === '-h') {
      process.stdout.write(`${USAGE}\n`)
      process.exit(0)
    } else if (valued[arg]) {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`)
      options[valued[arg]] = argv[++i]
    } else if (arg.startsWith('--')) {
      usage(`unknown option ${arg}`)
    } else {
      positional.push(arg)
    }
  }
  if (positional.length !== 2) usage('expected exactly two arguments: <url> <auth>')
  const [url, authArg] = positional

  let auth
  if (authArg.trim().startsWith('{')) {
    try {
      auth = JSON.parse(authArg)
    } catch (error) {
      usage(`<auth> looks like JSON but does not parse: ${error.message}`)
    }
  } else {
    auth = { token: authArg }
  }

  for (const key of ['beats', 'timeout']) {
    const n = Number(options[key])
    if (!Number.isInteger(n) || n < 0) usage(`--${key} must be a non-negative integer`)
    options[key] = n
  }
  if (options.expectUser === undefined) {
    const id = typeof auth.token === 'string' && auth.token.startsWith('user:') ? auth.token.slice(5) : ''
    options.expectUser = id ? { id, name: `User ${id}` } : 'any'
  } else if (options.expectUser !== 'any') {
    try {
      options.expectUser = JSON.parse(options.expectUser)
    } catch (error) {
      usage(`--expect-user is neither "any" nor JSON: ${error.message}`)
    }
  }
  if (options.echoReplyType === undefined) options.echoReplyType = options.echoType
  if (options.broadcastReplyType === undefined) options.broadcastReplyType = options.broadcastType
  if (options.expectPushed === 'none') options.expectPushed = undefined
  return { url, auth, options }
}

const { url, auth, options } = parseArgs(process.argv.slice(2))
const started = Date.now()
const summary = { ok: true, url }
let phase = 'connect'
let client
let finished = false

// Prints the result line, closes the socket politely (at most 300 ms), and exits.
function finish (code, line) {
  if (finished) return
  finished = true
  process.stdout.write(`${JSON.stringify(line)}\n`)
  const ws = client && client.ws
  if (!ws || ws.readyState !== ws.OPEN) process.exit(code)
  setTimeout(() => process.exit(code), 300)
  ws.once('close', () => process.exit(code))
  try {
    client.disconnect(1000)
  } catch (_) {
    process.exit(code)
  }
}

function fail (message) {
  if (finished) return
  process.stderr.write(`check-client: FAIL during ${phase}: ${message}\n`)
  finish(1, { ok: false, url, phase, error: message, elapsed_ms: Date.now() - started })
}

function log (message) {
  if (options.verbose) process.stderr.write(`check-client: ${message}\n`)
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// Resolves with the first value `test` returns that is not undefined, for events `event` of `emitter`.
function waitFor (emitter, event, test) {
  return new Promise(resolve => {
    const listener = (...args) => {
      const value = test(...args)
      if (value !== undefined) {
        emitter.removeListener(event, listener)
        resolve(value)
      }
    }
    emitter.on(event, listener)
  })
}

async function roundTrip (sendType, replyType, what) {
  const d = { check: what, nonce: `${what}-${process.pid}-${Date.now()}`, nested: { list: [1, 'two', null] } }
  const sentAt = Date.now()
  const reply = waitFor(client, 'message', message =>
    message.opcode === 0 && message.type === replyType && isDeepStrictEqual(message.data, d) ? message : undefined)
  client.send(new Message(0, d, sendType))
  await reply
  return { type: sendType, reply_type: replyType, round_trip_ms: Date.now() - sentAt }
}

// Sends one dispatch of type `sendType` (unless it is 'none'), then waits for a dispatch of type `pushedType`.
async function sendAndAwaitPush (sendType, pushedType) {
  const sentAt = Date.now()
  // Listening before sending: a push written right after the server read the dispatch is not missed.
  const pushed = waitFor(client, 'message', message =>
    message.opcode === 0 && message.type === pushedType ? message : undefined)
  const result = { pushed_type: pushedType }
  if (sendType !== 'none') {
    const d = { check: 'send', nonce: `send-${process.pid}-${Date.now()}` }
    client.send(new Message(0, d, sendType))
    result.sent = { type: sendType, d }
  }
  const message = await pushed
  result.pushed_d = message.data === undefined ? null : message.data
  result.wait_ms = Date.now() - sentAt
  return result
}

async function main () {
  client = new Client(url, { autoConnect: false })
  client.on('error', error => fail(`client error: ${error && error.message ? error.message : error}`))
  client.on('disconnected', (code, reason) => fail(`server closed the connection: ${code} ${JSON.stringify(String(reason || ''))}`))

  const connected = waitFor(client, 'connected', info => info)
  const opened = client.connect()
  // connect() created the socket synchronously; watch its raw frames next to the client's own handler.
  const frames = client.ws
  let heartbeats = 0
  let hello
  const helloReceived = new Promise(resolve => {
    frames.on('message', data => {
      const text = data.toString()
      log(`<- ${text}`)
      let frame
      try {
        frame = JSON.parse(text)
      } catch (error) {
        return fail(`server sent a frame that is not JSON: ${text.slice(0, 200)}`)
      }
      if (frame.op === 10) {
        hello = frame.d
        resolve(frame.d)
      } else if (frame.op === 1) {
        heartbeats++
        if (frame.d && frame.d.tries !== undefined) {
          fail(`the server reports missed heartbeats although the client answered: ${text}`)
        }
      }
    })
  })
  await opened
  const info = await connected
  if (!info.isInitialConnection) fail(`'connected' is not the initial connection: ${JSON.stringify(info)}`)
  phase = 'hello'
  await helloReceived
  summary.hello = hello
  if (!hello || !Array.isArray(hello.rules)) fail(`Hello has no rules array (1.5 clients need one): ${JSON.stringify(hello)}`)

  if (options.beats > 0) {
    phase = 'heartbeats'
    const interval = hello.c_heartbeat_interval
    if (!Number.isInteger(interval) || interval <= 0) {
      fail(`Hello announces no heartbeat interval (${JSON.stringify(hello)}); pass --beats 0 to skip the heartbeat check`)
    }
    if (client.heartbeatIntervalTime !== interval) {
      fail(`the client did not take the interval from Hello: it has ${client.heartbeatIntervalTime}`)
    }
    const stay = Math.round((options.beats + 0.5) * interval)
    if (Date.now() - started + stay + 2000 > options.timeout) {
      fail(`staying ${options.beats} beats of ${interval} ms (${stay} ms) does not fit in --timeout ${options.timeout}; raise --timeout`)
    }
    await sleep(stay)
    if (heartbeats < options.beats) {
      fail(`only ${heartbeats} heartbeats in ${stay} ms with an interval of ${interval} ms`)
    }
    summary.heartbeat_interval_ms = interval
    summary.heartbeats_answered = heartbeats
    summary.stayed_ms = stay
  }

  phase = 'authentication'
  const user = await client.authenticate(auth)
  if (options.expectUser === 'any') {
    if (user === null || typeof user !== 'object' || Array.isArray(user)) {
      fail(`op 22 does not carry a user object: ${JSON.stringify(user)}`)
    }
  } else if (!isDeepStrictEqual(user, options.expectUser)) {
    fail(`op 22 carries ${JSON.stringify(user)}, expected ${JSON.stringify(options.expectUser)}`)
  }
  if (!client.authenticated) fail('the client does not consider itself authenticated after op 22')
  summary.user = user

  if (options.echoType !== 'none') {
    phase = 'echo'
    summary.echo = await roundTrip(options.echoType, options.echoReplyType, 'echo')
  }

  if (options.broadcastType !== 'none') {
    phase = 'broadcast'
    summary.broadcast = await roundTrip(options.broadcastType, options.broadcastReplyType, 'broadcast')
  }

  if (options.expectPushed !== undefined) {
    phase = 'push'
    summary.push = await sendAndAwaitPush(options.sendType, options.expectPushed)
  }

  phase = 'done'
  summary.elapsed_ms = Date.now() - started
  finish(0, summary)
}

setTimeout(() => fail(`timed out after ${options.timeout} ms`), options.timeout)
process.on('unhandledRejection', error => fail(`unhandled rejection: ${error && error.message ? error.message : error}`))
process.on('uncaughtException', error => fail(`uncaught exception (in the client?): ${error && error.stack ? error.stack : error}`))
main().catch(error => fail(error && error.stack ? error.stack : String(error)))
