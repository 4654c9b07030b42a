// The mesa-js-client drop-in check: one page written for mesa-js-client 1.4.8 (fixtures/mesa-js-client-page.html,
// which imports 'mesa-js-client') runs twice against a real `mesa serve --demo`, once with the real package and
// once with ours mapped in its place by an import map, and both must produce the same log.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { freePort, launchBrowser, screenshot, startMesa, startPages, stopAll } from './harness.mjs';

const page = readFileSync(new URL('./fixtures/mesa-js-client-page.html', import.meta.url), 'utf8');
const modules = {
  real: readFileSync(new URL('../../node_modules/mesa-js-client/lib/mesa-js-client.modern.js', import.meta.url), 'utf8'),
  ours: readFileSync(new URL('../../dist/index.js', import.meta.url), 'utf8'),
};

let port;
let browser;
let pages;
let which = 'ours';
let user = '';

before(async () => {
  port = await freePort();
  await startMesa(port);
  browser = await launchBrowser();
  pages = await startPages({
    '/page.html': () => ['text/html', page.replaceAll('__USER__', user).replaceAll('__GATEWAY__', `ws://127.0.0.1:${port}/`)],
    '/mesa-js-client.js': () => ['text/javascript', modules[which]],
  });
});
after(stopAll);

/** Runs the fixture with `which` client as 'mesa-js-client'; returns its log once it has disconnected. */
async function run(client, name) {
  which = client;
  user = name;
  const tab = await browser.newPage();
  await tab.goto(`http://127.0.0.1:${pages.port}/page.html`);
  await tab.waitForFunction(() => window.done === true, null, { timeout: 15000 });
  const result = await tab.evaluate(() => ({ log: window.log, sent: window.sent, received: window.received }));
  await screenshot(tab, `dropin-${client}`);
  await tab.close();
  return result;
}

test('a page written for mesa-js-client behaves the same with our client', async () => {
  const real = await run('real', 'dropin-real');
  const ours = await run('ours', 'dropin-ours');
  for (const result of [real, ours]) {
    assert.equal(result.sent, 3);
    assert.equal(result.received, result.sent, 'every message the page sent came back');
  }
  const normalise = (log) => log.map((entry) => JSON.stringify(entry).replaceAll('dropin-real', 'USER').replaceAll('dropin-ours', 'USER'));
  assert.deepEqual(normalise(ours.log), normalise(real.log));
  assert.deepEqual(ours.log[0], [
    'connected',
    { isInitialConnection: true, isInitialSessionConnection: true, isAutomaticReconnection: false },
  ]);
  assert.deepEqual(ours.log.at(-1), ['disconnected', 1000, 'bye', { willAttemptReconnect: false }]);
});
