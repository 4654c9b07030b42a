// The demo chat in real Chromium against a real `mesa serve --demo`: two pages chat; the gateway is killed and
// restarted on the same port and both pages reconnect, re-authenticate and chat again without a reload; a
// gateway that goes silent (SIGSTOP) is detected. Every phase counts what was sent and what arrived.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { freePort, kill, launchBrowser, screenshot, startMesa, stopAll, HEARTBEAT_MS } from './harness.mjs';

let port;
let gateway;
let browser;
let ada;
let bob;

before(async () => {
  port = await freePort();
  browser = await launchBrowser();
});
after(stopAll);

const stats = (page) => page.evaluate(() => ({ ...window.demo.stats }));
const state = (page) => page.evaluate(() => window.demo.client.state);
const online = (page) => page.$$eval('#online li', (items) => items.map((li) => li.textContent));

async function join(page, name) {
  await page.fill('#name', name);
  await page.click('#join');
  await page.waitForFunction((n) => window.demo.client.authenticated && window.demo.client.user?.id === n, name);
}

async function say(page, texts) {
  for (const text of texts) {
    await page.fill('#text', text);
    await page.click('#send');
  }
}

/** Waits until `page` has received `count` chat messages in all. */
async function received(page, count, timeout = 10000) {
  await page.waitForFunction((n) => window.demo.stats.received >= n, count, { timeout });
  return (await stats(page)).received;
}

test('the demo page connects and says it is a demo without authentication', async () => {
  ada = await browser.newPage();
  gateway = await startMesa(port);
  await ada.goto(`http://127.0.0.1:${port}/demo`);
  await ada.waitForFunction(() => window.demo.client.state === 'connected');
  await screenshot(ada, 'chat-1-connected-before-joining');
  assert.match(await ada.textContent('.warning'), /without authentication/);
});

test('two pages chat: every message sent arrives at both pages, presence lists both', async () => {
  bob = await browser.newPage();
  await bob.goto(`http://127.0.0.1:${port}/demo`);
  await join(ada, 'ada');
  await join(bob, 'bob');
  await ada.waitForFunction(() => document.querySelectorAll('#online li').length === 2);
  await bob.waitForFunction(() => document.querySelectorAll('#online li').length === 2);
  assert.deepEqual(await online(ada), ['ada', 'bob']);

  await say(ada, ['hello bob', 'how are you?', 'third']);
  await say(bob, ['hi ada', 'fine']);
  const sent = (await stats(ada)).sent + (await stats(bob)).sent;
  assert.equal(sent, 5);
  assert.equal(await received(ada, sent), sent);
  assert.equal(await received(bob, sent), sent);
  const texts = await bob.$$eval('#messages li:not(.note)', (items) => items.map((li) => li.textContent));
  assert.deepEqual(texts, ['adahello bob', 'adahow are you?', 'adathird', 'bobhi ada', 'bobfine']);
  await screenshot(ada, 'chat-2-connected');
});

test('gateway killed and restarted on the same port: both pages reconnect, re-authenticate and chat again', async () => {
  const before = { ada: await stats(ada), bob: await stats(bob) };
  await kill(gateway);
  await ada.waitForFunction(() => window.demo.client.state === 'reconnecting');
  await bob.waitForFunction(() => window.demo.client.state === 'reconnecting');
  // The badge flips between "reconnecting in …" (waiting) and "reconnecting (attempt n)…" (trying a refused
  // port) every few hundred ms, so wait for the waiting text rather than read it once.
  await ada.waitForFunction(() => /reconnecting in \d+\.\d s/.test(document.querySelector('#state').textContent));
  await screenshot(ada, 'chat-3-reconnecting');
  // Sent while the gateway is down: queued, and flushed only after re-authentication (an unauthenticated
  // CHAT would be refused with DEMO_ERROR instead of relayed, so its echo proves the order).
  await say(ada, ['sent while offline 1', 'sent while offline 2']);
  assert.equal(await ada.evaluate(() => window.demo.client.queued), 2);

  gateway = await startMesa(port);
  for (const page of [ada, bob]) {
    await page.waitForFunction(
      (n) => window.demo.stats.authenticated > n && window.demo.client.state === 'connected',
      before[page === ada ? 'ada' : 'bob'].authenticated,
      { timeout: 20000 },
    );
  }
  assert.equal(await ada.evaluate(() => window.demo.client.queued), 0);
  const adaNow = await received(ada, before.ada.received + 2);
  assert.equal(adaNow, before.ada.received + 2, 'both offline messages came back to their sender, once');
  const offlineEcho = await ada.$$eval('#messages li:not(.note)', (items) => items.slice(-2).map((li) => li.textContent));
  assert.deepEqual(offlineEcho, ['adasent while offline 1', 'adasent while offline 2']);
  await ada.waitForFunction(() => document.querySelectorAll('#online li').length === 2);
  await bob.waitForFunction(() => document.querySelectorAll('#online li').length === 2);

  // Both authenticated again: a new round reaches both.
  const base = { ada: (await stats(ada)).received, bob: (await stats(bob)).received };
  await say(bob, ['back again', 'still here']);
  await say(ada, ['me too']);
  assert.equal(await received(ada, base.ada + 3), base.ada + 3);
  assert.equal(await received(bob, base.bob + 3), base.bob + 3);
  const after = { ada: await stats(ada), bob: await stats(bob) };
  assert.equal(after.ada.sent - before.ada.sent + after.bob.sent - before.bob.sent, 5);
  assert.ok(after.ada.reconnects > before.ada.reconnects && after.bob.reconnects > before.bob.reconnects);
  assert.equal(await ada.evaluate(() => location.href), `http://127.0.0.1:${port}/demo`, 'no reload');
  await screenshot(bob, 'chat-4-reconnected');
});

test('a gateway that goes silent (SIGSTOP) is detected within the heartbeat interval plus slack', async () => {
  const deadBefore = (await stats(ada)).dead;
  const stoppedAt = Date.now();
  process.kill(gateway.pid, 'SIGSTOP');
  try {
    await ada.waitForFunction((n) => window.demo.stats.dead > n, deadBefore, { timeout: 10000 });
    const detectedAfter = Date.now() - stoppedAt;
    // interval + slack (max(1 s, interval / 2)), plus up to one interval since the last beat and some margin.
    assert.ok(detectedAfter <= 2 * HEARTBEAT_MS + 1000 + 2000, `detected after ${detectedAfter} ms`);
    assert.equal((await ada.evaluate(() => window.demo.client.lastClose)).code, 1006);
    await screenshot(ada, 'chat-5-silent-server-detected');
    // The next attempt hangs: the stopped process's kernel accepts the TCP connection, nothing answers the
    // upgrade (given up after connectTimeout).
    await ada.waitForFunction(() => window.demo.client.state === 'connecting' && window.demo.client.attempt > 0);
    await ada.waitForFunction(() => /reconnecting \(attempt \d+\)/.test(document.querySelector('#state').textContent));
    await screenshot(ada, 'chat-6-connecting');
  } finally {
    process.kill(gateway.pid, 'SIGCONT');
  }
  await ada.waitForFunction(() => window.demo.client.state === 'connected' && window.demo.client.authenticated, null, {
    timeout: 20000,
  });
  assert.equal(await state(ada), 'connected');
  await bob.waitForFunction(() => window.demo.client.state === 'connected' && window.demo.client.authenticated, null, {
    timeout: 20000,
  });
  // Chat works again after the gateway resumed.
  const base = { ada: await stats(ada), bob: await stats(bob) };
  await say(ada, ['after the pause']);
  await say(bob, ['same here']);
  const sent = (await stats(ada)).sent - base.ada.sent + (await stats(bob)).sent - base.bob.sent;
  assert.equal(sent, 2);
  assert.equal(await received(ada, base.ada.received + sent), base.ada.received + sent);
  assert.equal(await received(bob, base.bob.received + sent), base.bob.received + sent);
});
