// Resumable sessions (docs/protocol.md, "Resumable sessions") on a fake clock with a fake socket: what goes on
// the wire for a fresh session, a resume and a refused resume; duplicates dropped and gaps resumed from the
// last dispatch handed over; acknowledgements; which closes keep the session; op 7; and a server without
// `c_resume` seeing Mesa 1.5's frames exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import MesaClient from '../../dist/index.js';
import { FakeClock, fakeWebSocket } from './fakes.mjs';

const C_RESUME = { session_ttl: 300000, max_messages: 1000, max_bytes: 1048576, max_age: 900000 };
const SESSION = '5f0c9e1a7b3d4c2e8a6f1b0d9c8e7a6b';
const OTHER_SESSION = '0b6e2f4d8c1a9e7f3d5b2c4a6e8f0d1c';

function setup(config = {}) {
  const clock = new FakeClock();
  const { FakeSocket, sockets } = fakeWebSocket();
  const client = new MesaClient('ws://test/', { WebSocket: FakeSocket, clock, random: () => 0, ...config });
  const last = () => sockets[sockets.length - 1];
  const delivered = [];
  client.onMessage = (message) => delivered.push(message);
  const sessions = [];
  client.addEventListener('session', (event) => sessions.push(event.detail));
  return { clock, sockets, client, last, delivered, sessions };
}

/** Opens the current socket, plays a resuming server's Hello, and returns the socket. */
function openResumable(last) {
  last().open();
  last().hello({ c_resume: C_RESUME });
  return last();
}

/** Reconnects after a drop (the fake random makes every delay 0). */
function reconnect(clock, last) {
  clock.advance(0);
  return openResumable(last);
}

const dispatch = (n, s) => ({ op: 0, d: { n }, t: 'NUM', ...(s === undefined ? {} : { s }) });
const numbers = (delivered) => delivered.filter((m) => m.opcode === 0).map((m) => m.data.n);

test('a fresh session: op 2 waits for the Hello and asks for resumable; op 22 gives the user, s is passed on', async () => {
  const { client, last, delivered, sessions } = setup();
  last().open();
  const user = client.authenticate({ token: 't-ada' });
  assert.deepEqual(last().sent, [], 'nothing before the Hello says whether the server resumes');
  assert.equal(client.state, 'authenticating');
  last().hello({ c_resume: C_RESUME });
  assert.deepEqual(last().sent, [{ op: 2, d: { token: 't-ada', shouldSync: true, resumable: true } }]);
  last().receive({ op: 22, d: { user: { id: 'ada' }, session_id: SESSION, resumed: false, seq: 4 } });
  assert.deepEqual(await user, { id: 'ada' });
  assert.deepEqual(client.session, { id: SESSION, last: 4 });
  assert.deepEqual(sessions, [{ sessionId: SESSION, resumed: false, seq: 4, invalidated: null, state: 'connected' }]);
  last().receive(dispatch('mailbox 1', 5));
  last().receive(dispatch('mailbox 2', 6));
  last().receive({ op: 0, d: { user: 'bob' }, t: 'TYPING' }); // volatile: no s
  assert.deepEqual(numbers(delivered), ['mailbox 1', 'mailbox 2', undefined]);
  assert.equal(delivered[0].sequence, 5);
  assert.equal(client.session.last, 6);
});

test('acknowledgements: every heartbeat answer carries s, and dispatches are acknowledged within 100 ms', () => {
  const { clock, client, last } = setup();
  const socket = openResumable(last);
  client.authenticate({ token: 't' });
  socket.receive({ op: 1, d: {} });
  assert.deepEqual(socket.sent.at(-1), { op: 11, d: {} }, 'no s before the session exists');
  socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
  socket.receive({ op: 1, d: {} });
  assert.deepEqual(socket.sent.at(-1), { op: 11, d: {}, s: 0 });
  for (let s = 1; s <= 3; s++) socket.receive(dispatch(s, s));
  const before = socket.sent.length;
  clock.advance(99);
  assert.equal(socket.sent.length, before, 'debounced');
  clock.advance(1);
  assert.deepEqual(socket.sent.slice(before), [{ op: 11, d: {}, s: 3 }]);
  clock.advance(1000);
  assert.equal(socket.sent.filter((f) => f.op === 11 && f.s === 3).length, 1, 'nothing new: no second acknowledgement');
  socket.receive(dispatch(4, 4));
  socket.receive({ op: 1, d: {} });
  assert.deepEqual(socket.sent.at(-1), { op: 11, d: {}, s: 4 });
  clock.advance(200);
  assert.deepEqual(socket.sent.at(-1), { op: 11, d: {}, s: 4 }, 'the heartbeat answer already acknowledged 4');
});

test('after a drop the client resumes with op 6, hands over the missed dispatches once, then flushes its queue', async () => {
  const { clock, client, last, delivered, sessions } = setup();
  let socket = openResumable(last);
  client.authenticate({ token: 't' });
  socket.receive({ op: 22, d: { user: { id: 'ada' }, session_id: SESSION, resumed: false, seq: 0 } });
  for (let s = 1; s <= 5; s++) socket.receive(dispatch(s, s));
  socket.drop(1006);
  assert.equal(client.send(0, { text: 'queued' }, 'SAY'), true);
  socket = reconnect(clock, last);
  assert.deepEqual(socket.sent, [{ op: 6, d: { token: 't', shouldSync: true, session_id: SESSION, seq: 5 } }]);
  assert.equal(client.state, 'authenticating', 'the queue waits for op 22');
  socket.receive({ op: 22, d: { user: { id: 'ada' }, session_id: SESSION, resumed: true, seq: 5 } });
  assert.deepEqual(socket.sent.at(-1), { op: 0, d: { text: 'queued' }, t: 'SAY' });
  socket.receive(dispatch(5, 5)); // a duplicate: dropped
  for (let s = 6; s <= 8; s++) socket.receive(dispatch(s, s));
  assert.deepEqual(numbers(delivered), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(sessions.map((e) => [e.resumed, e.seq]), [[false, 0], [true, 5]]);
  assert.equal(client.user.id, 'ada');
});

test('a refused resume (op 9 session_unknown) starts a fresh session on the same connection and says what was lost', async () => {
  const { clock, client, last, delivered, sessions } = setup();
  let socket = openResumable(last);
  const first = client.authenticate({ token: 't' });
  socket.receive({ op: 22, d: { user: { id: 'ada' }, session_id: SESSION, resumed: false, seq: 0 } });
  await first;
  socket.receive(dispatch(1, 1));
  socket.drop(1001);
  socket = reconnect(clock, last);
  assert.equal(socket.sent[0].op, 6);
  socket.receive({ op: 9, d: { code: 'session_unknown', reason: 'unknown or expired session' } });
  assert.deepEqual(socket.sent.at(-1), { op: 2, d: { token: 't', shouldSync: true, resumable: true } });
  assert.equal(delivered.filter((m) => m.opcode === 9).length, 0, 'a handled refusal is not an application message');
  socket.receive({ op: 22, d: { user: { id: 'ada' }, session_id: OTHER_SESSION, resumed: false, seq: 9 } });
  assert.deepEqual(sessions.at(-1), {
    sessionId: OTHER_SESSION,
    resumed: false,
    seq: 9,
    invalidated: { sessionId: SESSION, lastSeq: 1, reason: 'refused', code: 'session_unknown', detail: 'unknown or expired session' },
    state: 'connected',
  });
  assert.deepEqual(client.session, { id: OTHER_SESSION, last: 9 });
  assert.equal(client.authenticated, true);
});

test('refused credentials on a resume reject authenticate() and end the session', async () => {
  const { clock, client, last } = setup();
  let socket = openResumable(last);
  client.authenticate({ token: 't' });
  socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
  socket.drop(1006);
  socket = reconnect(clock, last);
  const again = client.authenticate({ token: 't' });
  socket.receive({ op: 9, d: { code: 'authentication_failed', reason: 'token revoked' } });
  await assert.rejects(again, /token revoked/);
  assert.equal(client.session, null);
});

test('a sequence gap closes with 4000 (keeping the session) and resumes from the last dispatch handed over', () => {
  const { clock, client, last, delivered } = setup();
  let socket = openResumable(last);
  client.authenticate({ token: 't' });
  socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
  socket.receive(dispatch(1, 1));
  socket.receive(dispatch(3, 3));
  assert.equal(socket.closedWith.code, 4000);
  assert.match(socket.closedWith.reason, /sequence gap: expected s = 2, got 3/);
  assert.equal(client.state, 'reconnecting');
  socket = reconnect(clock, last);
  assert.deepEqual(socket.sent[0].d.seq, 1);
  assert.deepEqual(numbers(delivered), [1]);
});

test('closes that keep the session resume; closes that end it start fresh; 4012 stops', () => {
  for (const code of [1001, 1006, 1011, 1012, 1013, 4008, 4009, 4010]) {
    const { clock, client, last } = setup();
    const socket = openResumable(last);
    client.authenticate({ token: 't' });
    socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
    socket.drop(code);
    assert.equal(reconnect(clock, last).sent[0].op, 6, `close ${code} keeps the session`);
  }
  for (const code of [4006, 4011, 4013]) {
    const { clock, client, last, sessions } = setup();
    const socket = openResumable(last);
    client.authenticate({ token: 't' });
    socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
    socket.drop(code, 'why');
    const next = reconnect(clock, last);
    assert.deepEqual(next.sent[0], { op: 2, d: { token: 't', shouldSync: true, resumable: true } }, `close ${code} ends the session`);
    next.receive({ op: 22, d: { user: {}, session_id: OTHER_SESSION, resumed: false, seq: 0 } });
    assert.deepEqual(sessions.at(-1).invalidated, { sessionId: SESSION, lastSeq: 0, reason: 'server_closed', code, detail: 'why' });
  }
  {
    const { client, sockets, last } = setup();
    const socket = openResumable(last);
    client.authenticate({ token: 't' });
    socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
    socket.drop(4012, 'session resumed on another connection');
    assert.equal(client.state, 'closed', 'another connection serves the session: this one must not take it back');
    assert.equal(client.session, null);
    assert.equal(sockets.length, 1);
  }
});

test('mid-session op 9 retention_exceeded then 4013: the next connection starts a fresh session', () => {
  const { clock, client, last, sessions } = setup();
  let socket = openResumable(last);
  client.authenticate({ token: 't' });
  socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
  socket.receive(dispatch(1, 1));
  socket.receive({ op: 9, d: { code: 'retention_exceeded', reason: 'what this session is owed is no longer kept' } });
  socket.drop(4013, 'session invalidated');
  socket = reconnect(clock, last);
  assert.equal(socket.sent[0].op, 2);
  assert.equal(socket.sent[0].d.resumable, true);
  socket.receive({ op: 22, d: { user: {}, session_id: OTHER_SESSION, resumed: false, seq: 1 } });
  assert.equal(sessions.at(-1).invalidated.code, 'retention_exceeded');
});

test('disconnect() ends the session with 1000; disconnect(4000) keeps it for the next connect()', async () => {
  {
    const { client, last } = setup();
    const socket = openResumable(last);
    client.authenticate({ token: 't' });
    socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
    client.disconnect();
    assert.equal(socket.closedWith.code, 1000);
    socket.drop(1000);
    assert.equal(client.session, null);
    client.connect().catch(() => {});
    openResumable(last);
    assert.equal(last().sent[0].op, 2);
  }
  {
    const { client, last } = setup();
    const socket = openResumable(last);
    client.authenticate({ token: 't' });
    socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
    socket.receive(dispatch(1, 1));
    client.disconnect(4000, 'back soon');
    socket.drop(4000);
    assert.deepEqual(client.session, { id: SESSION, last: 1 });
    client.connect().catch(() => {});
    openResumable(last);
    assert.deepEqual(last().sent[0], { op: 6, d: { token: 't', shouldSync: true, session_id: SESSION, seq: 1 } });
  }
});

test('op 7 in a session: leaves at once with 4000 (not 1000) and comes back after retry_after_ms', () => {
  const { clock, client, sockets, last } = setup();
  const socket = openResumable(last);
  client.authenticate({ token: 't' });
  socket.receive({ op: 22, d: { user: {}, session_id: SESSION, resumed: false, seq: 0 } });
  socket.receive({ op: 7, d: { retry_after_ms: 1500 } });
  assert.equal(socket.closedWith.code, 4000);
  assert.equal(client.state, 'reconnecting');
  clock.advance(1499);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(sockets.length, 2);
  assert.equal(openResumable(last).sent[0].op, 6);
});

test('a server without c_resume sees Mesa 1.5 frames exactly, and s passes through untouched', () => {
  const { client, last, delivered } = setup();
  last().open();
  last().hello();
  client.authenticate({ id: 'ada' });
  last().receive({ op: 22, d: { id: 'ada' } });
  last().receive(dispatch('stored', 1));
  last().receive(dispatch('stored again', 1)); // Mesa 1.5 numbers per delivery: not a duplicate here
  last().receive({ op: 1, d: {} });
  assert.deepEqual(last().sent, [{ op: 2, d: { id: 'ada', shouldSync: true } }, { op: 11, d: {} }]);
  assert.deepEqual(numbers(delivered), ['stored', 'stored again']);
  assert.equal(client.session, null);
  assert.deepEqual(client.user, { id: 'ada' });
});

test('resume: false authenticates as Mesa 1.5 even when the server offers c_resume', () => {
  const { client, last } = setup({ resume: false });
  last().open();
  client.authenticate({ id: 'ada' });
  assert.deepEqual(last().sent, [{ op: 2, d: { id: 'ada', shouldSync: true } }], 'sent at once: nothing to wait for');
  last().hello({ c_resume: C_RESUME });
  last().receive({ op: 22, d: { id: 'ada' } });
  assert.equal(client.session, null);
});

test('shouldSync: false keeps Mesa 1.5 semantics (no session, no backlog) even when the server offers c_resume', () => {
  const { client, last } = setup();
  const socket = openResumable(last);
  client.authenticate({ id: 'ada' }, { shouldSync: false });
  assert.deepEqual(socket.sent, [{ op: 2, d: { id: 'ada', shouldSync: false } }]);
  socket.receive({ op: 22, d: { id: 'ada' } });
  assert.equal(client.session, null);
  assert.deepEqual(client.user, { id: 'ada' });
});
