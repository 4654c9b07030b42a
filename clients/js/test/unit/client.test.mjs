// The client's state machine on a fake clock with a fake socket: backoff, queue bound, authentication
// ordering, heartbeats and dead-server detection, close codes, and the mesa-js-client callback arguments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import MesaClient, { backoffDelay, canReconnect, livenessTimeout, TERMINAL_CLOSE_CODES } from '../../dist/index.js';
import { FakeClock, fakeWebSocket } from './fakes.mjs';
import { expected, vendored } from '../../scripts/vendor.mjs';

function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeSocket, sockets } = fakeWebSocket();
  const randoms = [];
  const random = () => {
    const value = options.randomValue ?? 0.5;
    randoms.push(value);
    return value;
  };
  const client = new MesaClient('ws://test/', { WebSocket: FakeSocket, clock, random, ...options.config });
  const last = () => sockets[sockets.length - 1];
  return { clock, sockets, client, last };
}

test('the vendored demo copy is the current build', () => {
  assert.equal(readFileSync(vendored, 'utf8'), expected(), 'run `npm run vendor` in clients/js and commit crates/mesa-cli/assets/demo/mesa-client.js');
});

test('backoff: full jitter below min(cap, base * 2^attempt)', () => {
  assert.equal(backoffDelay(0, 500, 30000, () => 0), 0);
  assert.equal(backoffDelay(0, 500, 30000, () => 0.999999), 500);
  assert.equal(backoffDelay(3, 500, 30000, () => 0.999999), 4000);
  assert.equal(backoffDelay(20, 500, 30000, () => 0.999999), 30000);
  assert.equal(backoffDelay(1000, 500, 30000, () => 0.5), 15000);
  for (let i = 0; i < 200; i++) {
    const delay = backoffDelay(4, 500, 30000, Math.random);
    assert.ok(delay >= 0 && delay <= 8000);
  }
});

test('reconnect schedule grows from c_reconnect_interval, is capped, and resets after op 22', () => {
  const { clock, client, sockets, last } = setup({ randomValue: 0.999999, config: { reconnectCap: 3000 } });
  last().open();
  last().hello(); // c_reconnect_interval 500
  const waits = [];
  for (let i = 0; i < 5; i++) {
    last().drop(1006);
    assert.equal(client.state, 'reconnecting');
    waits.push(client.nextReconnectAt - clock.now());
    clock.advance(client.nextReconnectAt - clock.now());
    assert.equal(client.state, 'connecting');
    last().open();
    last().hello();
  }
  assert.deepEqual(waits, [500, 1000, 2000, 3000, 3000]);
  client.authenticate({ id: 'a' });
  last().receive({ op: 22, d: { id: 'a' } });
  last().drop(1006);
  assert.equal(client.nextReconnectAt - clock.now(), 500, 'a healthy connection resets the backoff');
  assert.equal(sockets.length, 6);
});

test('before any Hello the configured base is used, and a refused first connection is retried', () => {
  const { clock, client, sockets, last } = setup({ randomValue: 0.999999, config: { reconnectInterval: 200 } });
  last().fail();
  assert.equal(client.state, 'reconnecting');
  assert.equal(client.nextReconnectAt - clock.now(), 200);
  clock.advance(200);
  assert.equal(sockets.length, 2);
});

test('close codes that mean "do not reconnect" stop the client', () => {
  for (const code of TERMINAL_CLOSE_CODES) {
    const { clock, client, sockets, last } = setup();
    const seen = [];
    client.onDisconnected = (c, reason, options) => seen.push([c, reason, options]);
    last().open();
    last().hello();
    last().drop(code, 'why');
    assert.equal(client.state, 'closed', `code ${code}`);
    assert.deepEqual(seen, [[code, 'why', { willAttemptReconnect: false }]]);
    clock.advance(120000);
    assert.equal(sockets.length, 1, `no reconnect after ${code}`);
  }
  for (const code of [1001, 1005, 1006, 1011, 1012, 1013, 4006, 4008, 4009, 4010]) {
    assert.ok(canReconnect(code), `code ${code} reconnects`);
  }
});

test('1012 and op 7 reconnect soon, after retry_after_ms, without growing the backoff', () => {
  const { clock, client, last } = setup({ randomValue: 0.999999 });
  last().open();
  last().hello({ c_reconnect_interval: 5000 });
  last().receive({ op: 7, d: { retry_after_ms: 2000 } });
  // Without a resumable session the connection stays until the server closes it: what it still delivers
  // would not be replayed elsewhere.
  assert.equal(client.state, 'connected');
  assert.equal(last().closedWith, null);
  last().drop(1012);
  assert.equal(client.state, 'reconnecting');
  const wait = client.nextReconnectAt - clock.now();
  assert.ok(wait >= 2000 && wait <= 3000, `waits retry_after_ms plus at most 1 s of jitter (${wait})`);
  assert.equal(client.attempt, 0);
  clock.advance(wait);
  last().open();
  last().hello({ c_reconnect_interval: 5000 });
  last().drop(1012);
  assert.ok(client.nextReconnectAt - clock.now() <= 1000, 'a later 1012 without op 7 waits no retry_after_ms');
});

test('authentication is re-sent after every reconnect before queued sends are flushed', () => {
  // resume: false sends op 2 as soon as the socket opens (with resume on it waits for the Hello).
  const { clock, client, last } = setup({ randomValue: 0, config: { resume: false } });
  last().open();
  last().hello();
  let user = null;
  client.authenticate({ id: 'ada' }).then((u) => (user = u));
  assert.deepEqual(last().sent, [{ op: 2, d: { id: 'ada', shouldSync: true } }]);
  last().receive({ op: 22, d: { id: 'ada', name: 'Ada' } });
  assert.equal(client.state, 'connected');
  last().drop(1006);
  // Sent while disconnected: queued.
  assert.equal(client.send(0, { n: 1 }, 'SAY'), true);
  assert.equal(client.send(0, { n: 2 }, 'SAY'), true);
  assert.equal(client.queued, 2);
  clock.advance(0);
  last().open();
  assert.equal(client.state, 'authenticating');
  assert.deepEqual(last().ops(), [2], 'only op 2 until op 22');
  last().hello();
  last().receive({ op: 1, d: {} });
  assert.deepEqual(last().ops(), [2, 11], 'heartbeats are answered while waiting');
  last().receive({ op: 22, d: { id: 'ada' } });
  assert.deepEqual(last().sent.slice(2), [
    { op: 0, d: { n: 1 }, t: 'SAY' },
    { op: 0, d: { n: 2 }, t: 'SAY' },
  ]);
  assert.equal(client.queued, 0);
  return Promise.resolve().then(() => assert.deepEqual(user, { id: 'ada', name: 'Ada' }));
});

test('a page that authenticates in onConnected (mesa-js-client style) sends op 2 once per connection', async () => {
  const { clock, client, last } = setup({ randomValue: 0 });
  const users = [];
  client.onConnected = async () => users.push(await client.authenticate({ token: 't' }));
  last().open();
  last().hello();
  last().receive({ op: 22, d: { id: 't' } });
  last().drop(1006);
  clock.advance(0);
  last().open();
  assert.deepEqual(last().ops(), [], 'op 2 waits for the Hello, which says whether to resume');
  last().hello();
  assert.deepEqual(last().ops(), [2]);
  last().receive({ op: 22, d: { id: 't' } });
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(users.length, 2);
});

test('a refused authentication rejects: close 1008 stops, op 9 keeps the connection', async () => {
  {
    const { client, last } = setup();
    last().open();
    const pending = client.authenticate({ id: 'x' });
    last().drop(1008, 'invalid token');
    await assert.rejects(pending, /invalid token/);
    assert.equal(client.state, 'closed');
  }
  {
    const { client, last } = setup();
    last().open();
    last().hello();
    client.send(0, {}, 'LATER');
    const pending = client.authenticate({ id: 'x' });
    last().receive({ op: 9, d: { reason: 'nope' } });
    await assert.rejects(pending, /nope/);
    assert.equal(client.state, 'connected');
  }
});

test('no op 22 within c_authentication_timeout drops the connection (4006) and retries', () => {
  const { clock, client, sockets, last } = setup({ randomValue: 0 });
  last().open();
  last().hello({ c_authentication_timeout: 2000, c_heartbeat_interval: 60000 });
  client.authenticate({ id: 'a' });
  clock.advance(1999);
  assert.equal(client.state, 'authenticating');
  clock.advance(1);
  assert.equal(client.lastClose.code, 4006);
  assert.equal(sockets[0].closedWith.code, 4000);
  clock.advance(0);
  last().open();
  last().hello();
  assert.deepEqual(last().ops(), [2], 'the credentials are sent again');
});

test('send queue is bounded and reports when full', () => {
  const { client } = setup({ config: { maxQueue: 3 } });
  const full = [];
  client.addEventListener('queuefull', (event) => full.push(event.detail));
  const results = [1, 2, 3, 4, 5].map((n) => client.send(0, { n }, 'X'));
  assert.deepEqual(results, [true, true, true, false, false]);
  assert.equal(client.queued, 3);
  assert.equal(full.length, 2);
  assert.deepEqual(full[0].dropped, { op: 0, d: { n: 4 }, t: 'X' });
});

test('a flushed queue is paced below the server rate limit, and every frame goes out once, in order', () => {
  const { clock, client, last } = setup({ config: { maxQueue: 500, rate: { burst: 10, perSecond: 100 } } });
  for (let n = 0; n < 300; n++) client.send(0, { n }, 'X');
  last().open();
  last().hello({ c_heartbeat_interval: 60000 });
  assert.equal(last().sent.length, 10, 'the burst goes at once');
  clock.advance(1000);
  const during = last().sent.length;
  assert.ok(during <= 10 + 100 + 1, `at most burst + rate per second, got ${during}`);
  clock.advance(3000);
  const sent = last().sent.map((frame) => frame.d.n);
  assert.equal(sent.length, 300);
  assert.deepEqual(sent, [...Array(300).keys()]);
});

test('message log is bounded', () => {
  const { client, last } = setup({ config: { messageLogLimit: 5 } });
  last().open();
  last().hello({ c_heartbeat_interval: 60000 });
  for (let n = 0; n < 50; n++) last().receive({ op: 0, d: { n }, t: 'X' });
  assert.equal(client.messages.received.length, 5);
  assert.deepEqual(client.messages.received.map((f) => f.d.n), [45, 46, 47, 48, 49]);
  const { client: quiet, last: quietLast } = setup();
  quietLast().open();
  for (let n = 0; n < 50; n++) quietLast().receive({ op: 0, d: { n }, t: 'X' });
  assert.equal(quiet.messages.received.length, 0, 'nothing is kept by default');
});

test('a server that stops heartbeating is detected after interval + slack', () => {
  const { clock, client, last } = setup();
  const dead = [];
  client.addEventListener('dead', (event) => dead.push(event.detail.silentFor));
  last().open();
  last().hello({ c_heartbeat_interval: 1000 }); // slack: max(1000, 500) = 1000
  assert.equal(livenessTimeout(1000), 2000);
  for (let i = 0; i < 5; i++) {
    clock.advance(1000);
    last().receive({ op: 1, d: {} });
  }
  assert.equal(client.state, 'connected');
  assert.equal(last().ops().filter((op) => op === 11).length, 5);
  clock.advance(1999);
  assert.equal(client.state, 'connected');
  clock.advance(1);
  assert.deepEqual(dead, [2000]);
  assert.equal(client.state, 'reconnecting');
  assert.equal(client.lastClose.code, 1006);
});

test('a socket that never sends Hello, or never opens, is given up', () => {
  const { clock, client, sockets, last } = setup({ config: { helloTimeout: 3000, connectTimeout: 4000 } });
  last().open();
  clock.advance(3000);
  assert.equal(client.state, 'reconnecting');
  clock.advance(client.nextReconnectAt - clock.now());
  assert.equal(sockets.length, 2);
  clock.advance(4000);
  assert.equal(client.state, 'reconnecting', 'the hanging open was given up');
});

test('mesa-js-client callbacks get its arguments', () => {
  const { clock, client, last } = setup({ randomValue: 0 });
  const connected = [];
  const messages = [];
  const errors = [];
  client.onConnected = (options) => connected.push(options);
  client.onMessage = (message) => messages.push(message);
  client.onError = (error) => errors.push(error);
  last().open();
  last().hello();
  last().receive({ op: 0, d: { a: 1 }, t: 'T' });
  last().receive({ op: 0, d: { a: 2 }, t: 'T', s: 4 });
  last().onmessage({ data: 'not json' });
  last().drop(1006);
  clock.advance(0);
  last().open();
  client.disconnect();
  assert.deepEqual(connected, [
    { isInitialConnection: true, isInitialSessionConnection: true, isAutomaticReconnection: false },
    { isInitialConnection: false, isInitialSessionConnection: false, isAutomaticReconnection: true },
  ]);
  assert.deepEqual(messages, [
    { opcode: 0, data: { a: 1 }, type: 'T' },
    { opcode: 0, data: { a: 2 }, type: 'T', sequence: 4 },
  ]);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof Error);
  assert.deepEqual(last().closedWith, { code: 1000, reason: undefined });
});

test('disconnect() stops reconnecting and connect() starts again', async () => {
  const { clock, client, sockets, last } = setup({ config: { autoConnect: false } });
  assert.equal(sockets.length, 0);
  const opened = client.connect();
  last().open();
  await opened;
  await assert.rejects(client.connect(), /already connected/);
  client.disconnect();
  last().drop(1000);
  assert.equal(client.state, 'closed');
  clock.advance(60000);
  assert.equal(sockets.length, 1);
  const again = client.connect();
  last().open();
  await again;
  assert.equal(client.state, 'connected');
});

test('enforce_equal_versions sends CLIENT_VERSION', () => {
  const { last } = setup();
  last().open();
  last().hello({ rules: ['enforce_equal_versions'] });
  assert.deepEqual(last().sent, [{ op: 0, d: { v: '1.5.3' }, t: 'CLIENT_VERSION' }]);
});

test('without credentials a heartbeat (not the Hello) marks the connection healthy', () => {
  const { clock, client, last } = setup({ randomValue: 0.999999 });
  last().open();
  last().hello();
  last().drop(1006);
  clock.advance(500);
  last().open();
  last().hello();
  last().drop(1006);
  assert.equal(client.nextReconnectAt - clock.now(), 1000);
  clock.advance(1000);
  last().open();
  last().hello();
  last().receive({ op: 1, d: {} });
  last().drop(1006);
  assert.equal(client.nextReconnectAt - clock.now(), 500);
});

test('going online (or visible) skips the reconnect wait', () => {
  const window = new EventTarget();
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener };
  globalThis.addEventListener = window.addEventListener.bind(window);
  globalThis.removeEventListener = window.removeEventListener.bind(window);
  try {
    const { client, sockets, last } = setup({ randomValue: 0.999999, config: { reconnectInterval: 60000 } });
    last().fail();
    assert.equal(client.state, 'reconnecting');
    window.dispatchEvent(new Event('online'));
    assert.equal(client.state, 'connecting');
    assert.equal(sockets.length, 2);
    client.disconnect();
    last().drop(1006);
    window.dispatchEvent(new Event('online'));
    assert.equal(sockets.length, 2, 'a stopped client stays stopped');
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
  }
});

test('the last advertised timings apply to attempts that get no Hello', () => {
  // resume: false: op 2 goes out before the Hello (with resume on it waits for it, under helloTimeout).
  const { clock, client, sockets, last } = setup({ randomValue: 0.999999, config: { resume: false } });
  last().open();
  last().hello({ c_reconnect_interval: 500, c_authentication_timeout: 700, c_heartbeat_interval: 60000 });
  last().drop(1006);
  assert.equal(client.nextReconnectAt - clock.now(), 500);
  clock.advance(500);
  last().fail(); // refused: no Hello on this attempt
  assert.equal(client.nextReconnectAt - clock.now(), 1000, 'base stays the advertised 500, not the default 1000');
  clock.advance(1000);
  client.authenticate({ id: 'a' });
  last().open(); // op 2 goes out before this connection's Hello
  clock.advance(700);
  assert.equal(client.lastClose.code, 4006, 'the advertised authentication timeout applies');
  assert.equal(sockets.length, 3);
});

test('connect() during an attempt replaces its socket instead of leaking it', () => {
  const { client, sockets } = setup();
  client.connect().catch(() => {});
  assert.equal(sockets.length, 2);
  assert.deepEqual(sockets[0].closedWith, { code: 1000, reason: undefined });
  sockets[0].open(); // late events of the replaced socket are ignored
  assert.equal(client.state, 'connecting');
});
