// What the browser tests share: a `mesa serve --demo` child process on a free 127.0.0.1 port, Debian's
// Chromium through playwright-core, a TCP proxy to cut connections, a server for test pages, and the
// screenshot directory.
//
// Every process started here is killed by pid in `stopAll()` (the tests call it in `after`).
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));

/** Where screenshots go: `$MESA_BROWSER_OUT`, else `<repo>/target/test-output/browser/`. */
export const OUT_DIR = process.env.MESA_BROWSER_OUT ?? resolve(here, '../../../../target/test-output/browser');

/** Heartbeat and reconnect timings of the test gateway, short so that the tests are quick. */
export const HEARTBEAT_MS = 1000;
export const RECONNECT_MS = 300;

const children = new Set();
const browsers = new Set();
const proxies = new Set();
const pageServers = new Set();

export function mesaBin() {
  const bin = process.env.MESA_BIN;
  if (!bin) throw new Error('MESA_BIN must name the `mesa` binary (cargo build -p mesa-cli; target/debug/mesa)');
  return bin;
}

/** A port nobody listens on right now. */
export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/** Starts `mesa serve --demo` on `port` (with `extraEnv`, e.g. `MESA_API__KEY`) and waits until `/healthz`
 * answers. */
export async function startMesa(port, extraEnv = {}) {
  const env = { ...process.env };
  // The test's gateway is configured here alone; mesa refuses unknown MESA_ variables (MESA_BIN included).
  for (const key of Object.keys(env)) if (key.startsWith('MESA_')) delete env[key];
  const child = spawn(mesaBin(), ['serve', '--demo', '--host', '127.0.0.1', '--port', String(port)], {
    env: {
      ...env,
      MESA_SERVER__HEARTBEAT__INTERVAL_MS: String(HEARTBEAT_MS),
      MESA_SERVER__RECONNECT__INTERVAL_MS: String(RECONNECT_MS),
      MESA_LOG__FILTER: 'warn',
      ...extraEnv,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    if (stderr.length < 20000) stderr += chunk;
  });
  child.on('exit', () => children.delete(child));
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`mesa serve exited with ${child.exitCode}: ${stderr}`);
    try {
      const response = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (response.ok) return child;
    } catch {
      /* not up yet */
    }
    await sleep(50);
  }
  kill(child);
  throw new Error(`mesa serve did not answer /healthz on ${port} within 15 s: ${stderr}`);
}

/** SIGKILLs a child this harness started and waits for it to exit. */
export async function kill(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((ok) => child.once('exit', ok));
  process.kill(child.pid, 'SIGKILL');
  await exited;
}

/** Debian's Chromium, headless, with the flags this machine needs (no browser download, no background network). */
export async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  browsers.add(browser);
  return browser;
}

/**
 * A TCP proxy on a free 127.0.0.1 port to `targetPort`: `cut()` destroys every connection through it, as a
 * network change does (the browser sees the WebSocket drop without a close frame, 1006).
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    const pair = [client, upstream];
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', ok);
  });
  const proxy = {
    port: server.address().port,
    /** Connections open through the proxy now. */
    get open() {
      return pairs.size;
    },
    /** Destroys every connection; returns how many there were. */
    cut() {
      const count = pairs.size;
      for (const [client, upstream] of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      return count;
    },
    close() {
      proxy.cut();
      return new Promise((ok) => server.close(ok));
    },
  };
  proxies.add(proxy);
  return proxy;
}

/**
 * A plain local HTTP server on a free 127.0.0.1 port serving `routes` (path → `() => [content type, body]`,
 * called per request). Pages come from here rather than from Playwright's routing: a page fulfilled by routing
 * counts as public to Chromium's local network access checks, which then block its WebSocket to 127.0.0.1.
 */
export async function startPages(routes) {
  const server = createHttpServer((request, response) => {
    const route = routes[request.url];
    if (!route) {
      response.writeHead(404);
      response.end();
      return;
    }
    const [type, body] = route();
    response.writeHead(200, { 'content-type': type });
    response.end(body);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const pages = { port: server.address().port, close: () => new Promise((ok) => server.close(ok)) };
  pageServers.add(pages);
  return pages;
}

/** Kills every gateway, closes every proxy, page server and browser started here. */
export async function stopAll() {
  for (const browser of browsers) await browser.close().catch(() => {});
  browsers.clear();
  for (const proxy of proxies) await proxy.close();
  proxies.clear();
  for (const pages of pageServers) await pages.close();
  pageServers.clear();
  for (const child of [...children]) await kill(child);
}

/** Saves a screenshot of `page` as `<OUT_DIR>/<name>.png`. */
export async function screenshot(page, name) {
  mkdirSync(OUT_DIR, { recursive: true });
  const path = join(OUT_DIR, `${name}.png`);
  await page.screenshot({ path });
  return path;
}

export function sleep(ms) {
  return new Promise((ok) => setTimeout(ok, ms));
}
