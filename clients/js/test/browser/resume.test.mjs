// Resumable sessions in real Chromium against a real `mesa serve --demo`, through a TCP proxy the test cuts:
// numbered durable sends (POST /api/send to the page's user) keep flowing while the page's connection is cut
// again and again; the page must hand every number to the application once and in order, each reconnect
// resuming the session. Then the gateway is killed and restarted (a single node keeps sessions in memory):
// the resume is refused and the page is told (a fresh session with `invalidated`), and new sends arrive.
// Every phase counts what was sent and what arrived, and prints it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { freePort, kill, launchBrowser, screenshot, sleep, startMesa, startPages, startProxy, stopAll } from './harness.mjs';

const KEY = 'browser-resume-test-api-key-0123456789';
const USER = 'ada-resume';
/** Numbered sends of the first phase, and how often the connection is cut meanwhile. */
const SENDS = 600;
const CUT_EVERY = 75;

const client = readFileSync(new URL('../../dist/index.js', import.meta.url), 'utf8');
const page = `<!doctype html><meta charset="utf-8"><title>resume</title>
<script type="module">
import MesaClient from '/mesa-client.js';
window.record = [];
window.sessions = [];
window.closes = [];
const client = new MesaClient(__GATEWAY__, { reconnectCap: 1000 });
window.client = client;
client.addEventListener('session', (event) => window.sessions.push(event.detail));
client.addEventListener('disconnected', (event) => window.closes.push(event.detail.code));
client.onMessage = ({ data, type, sequence }) => {
  if (type === 'NUM') window.record.push([data.n, sequence]);
};
client.authenticate({ id: ${JSON.stringify(USER)} }).then(() => (window.ready = true));
</script>`;

let gatewayPort;
let gateway;
let proxy;
let pages;
let browser;
let tab;

before(async () => {
  gatewayPort = await freePort();
  gateway = await startMesa(gatewayPort, { MESA_API__KEY: KEY });
  proxy = await startProxy(gatewayPort);
  browser = await launchBrowser();
  pages = await startPages({
    '/page.html': () => ['text/html', page.replace('__GATEWAY__', JSON.stringify(`ws://127.0.0.1:${proxy.port}/`))],
    '/mesa-client.js': () => ['text/javascript', client],
  });
});
after(stopAll);

/** Sends number `n` to the page's user as a durable dispatch; returns the HTTP status. */
async function send(n) {
  const response = await fetch(`http://127.0.0.1:${gatewayPort}/api/send`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ message: { op: 0, d: { n }, t: 'NUM' }, recipients: [USER] }),
  });
  await response.arrayBuffer();
  return response.status;
}

const record = () => tab.evaluate(() => window.record.map(([n]) => n));
const sessions = () => tab.evaluate(() => window.sessions);

/** Waits until the page has `count` numbers, then a little longer so that a duplicate would show. */
async function settle(count) {
  await tab.waitForFunction((n) => window.record.length >= n, count, { timeout: 20000 });
  await sleep(300);
}

/** Numbers missing from `got` (of 1..n), numbers seen twice, and places where a number follows a larger one. */
function audit(got, from, to) {
  const seen = new Map();
  for (const n of got) seen.set(n, (seen.get(n) ?? 0) + 1);
  const missing = [];
  for (let n = from; n <= to; n++) if (!seen.has(n)) missing.push(n);
  const duplicates = [...seen].filter(([, count]) => count > 1).map(([n]) => n);
  const outOfOrder = got.filter((n, i) => i > 0 && n < got[i - 1]).length;
  return { missing, duplicates, outOfOrder };
}

test('durable sends reach the page exactly once and in order while its connection is cut again and again', async () => {
  tab = await browser.newPage();
  await tab.goto(`http://127.0.0.1:${pages.port}/page.html`);
  await tab.waitForFunction(() => window.ready === true, null, { timeout: 15000 });
  let cuts = 0;
  let refused = 0;
  for (let n = 1; n <= SENDS; n++) {
    if ((await send(n)) !== 202) refused++;
    if (n % CUT_EVERY === 0) {
      // Once the page is back from the previous cut, cut it again mid-stream: the sends go on at once, while
      // it is away and while it resumes.
      await tab.waitForFunction(() => window.client.authenticated && window.client.state === 'connected', null, { timeout: 15000 });
      cuts += proxy.cut() > 0 ? 1 : 0;
    }
  }
  await settle(SENDS);
  const got = await record();
  const seen = await sessions();
  const { missing, duplicates, outOfOrder } = audit(got, 1, SENDS);
  const resumed = seen.filter((s) => s.resumed).length;
  console.log(
    `# resume in Chromium: sent ${SENDS} (refused ${refused}), delivered ${got.length}, cuts ${cuts}, resumed ${resumed}, ` +
      `fresh sessions ${seen.length - resumed}, missing ${missing.length}, duplicates ${duplicates.length}, out of order ${outOfOrder}`,
  );
  assert.equal(refused, 0, 'every send was accepted (202)');
  assert.equal(cuts, SENDS / CUT_EVERY, 'the connection was cut mid-stream every time');
  assert.deepEqual({ missing, duplicates, outOfOrder }, { missing: [], duplicates: [], outOfOrder: 0 });
  assert.equal(got.length, SENDS);
  assert.equal(seen[0].resumed, false);
  assert.equal(seen[0].invalidated, null);
  assert.equal(resumed, cuts, 'every cut was followed by a resume');
  assert.ok(seen.every((s) => s.invalidated === null), 'no session was lost');
  assert.ok(seen.slice(1).every((s) => s.resumed), 'every reconnection resumed');
  // The positions: consecutive from the session's start.
  const sequences = await tab.evaluate(() => window.record.map(([, s]) => s));
  const first = sequences[0];
  assert.deepEqual(sequences, sequences.map((_, i) => first + i));
  await screenshot(tab, 'resume-1-after-cuts');
});

test('a restarted gateway refuses the resume: the page is told, starts a fresh session, and new sends arrive', async () => {
  const before = (await record()).length;
  const previous = (await sessions()).length;
  await kill(gateway);
  gateway = await startMesa(gatewayPort, { MESA_API__KEY: KEY });
  await tab.waitForFunction((n) => window.sessions.length > n, previous, { timeout: 20000 });
  const fresh = (await sessions()).at(-1);
  assert.equal(fresh.resumed, false);
  assert.equal(fresh.invalidated?.reason, 'refused');
  assert.equal(fresh.invalidated?.code, 'session_unknown', JSON.stringify(fresh));
  assert.equal(fresh.invalidated?.lastSeq, (await tab.evaluate(() => window.record.at(-1)[1])));
  const more = 50;
  for (let n = SENDS + 1; n <= SENDS + more; n++) assert.equal(await send(n), 202);
  await settle(before + more);
  const got = (await record()).slice(before);
  const { missing, duplicates, outOfOrder } = audit(got, SENDS + 1, SENDS + more);
  console.log(
    `# after restart: sent ${more}, delivered ${got.length}, invalidated ${fresh.invalidated.code}, ` +
      `missing ${missing.length}, duplicates ${duplicates.length}, out of order ${outOfOrder}`,
  );
  assert.deepEqual({ missing, duplicates, outOfOrder, count: got.length }, { missing: [], duplicates: [], outOfOrder: 0, count: more });
  await screenshot(tab, 'resume-2-after-restart');
});
