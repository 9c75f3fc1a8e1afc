// WebSocket on the hub's URL, in a real browser: a page of the hub's
// origin opens `new WebSocket('/.well-known/mercure?topic=…')` with the
// token in the draft-07 `authorization` query parameter (a browser cannot
// set headers on a socket), receives updates published over HTTP,
// publishes text and binary updates on the socket, subscribes more on the
// open socket, and resumes from an id after a reconnect. A page of another
// origin is refused.
//
// Starts the real hub binary (HERALD_BIN, default ../../target/debug/herald)
// and drives Debian's Chromium (/usr/bin/chromium) through playwright-core.
// Run: `node --test tests/browser/`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { HERALD_BIN, CHROMIUM, mintJwt, freePort, sleep } from './support.mjs';

const SECRET = 'browser-ws-' + randomBytes(16).toString('hex');
// One key for both roles: the socket's token subscribes and publishes.
const JWT = mintJwt(SECRET, { mercure: { publish: ['*'], subscribe: ['*'] } });
const TOPIC = 'https://example.com/chat/1';

const children = [];
const dirs = [];
const contexts = [];
const sites = [];

// Browsers first (they hold connections to the sites and hubs), then the
// sites, then the hubs: nothing is left waiting for a peer to hang up.
after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  for (const s of sites) {
    s.closeAllConnections();
    await new Promise((ok) => s.close(ok));
  }
  await Promise.all(children.filter((c) => c.exitCode === null).map((c) => new Promise((ok) => {
    c.once('exit', ok);
    c.kill('SIGTERM');
  })));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function startHub() {
  const port = await freePort();
  const child = spawn(HERALD_BIN, ['serve', '--engine', 'memory', '--addr', `127.0.0.1:${port}`,
    '--publisher-jwt', SECRET, '--subscriber-jwt', SECRET, '--log', 'warn'],
  { stdio: ['ignore', 'ignore', 'pipe'] });
  let output = '';
  child.stderr.on('data', (d) => { output += d; });
  children.push(child);
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`hub exited early:\n${output}`);
    try {
      const res = await fetch(`${base}/healthz`);
      if (res.ok) return { base, port };
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`hub did not start:\n${output}`);
    await sleep(100);
  }
}

async function publishHttp(hub, fields) {
  const res = await fetch(`${hub.base}/.well-known/mercure`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${JWT}` },
    body: new URLSearchParams(fields),
  });
  assert.equal(res.status, 200, await res.text());
}

async function browser() {
  const dir = mkdtempSync(join(tmpdir(), 'herald-ws-'));
  dirs.push(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run'],
  });
  contexts.push(context);
  return context;
}

// In the page: a socket whose messages are kept in `window.got`, and a
// helper that waits for the first message matching a predicate.
const PAGE_HELPERS = `
  window.got = [];
  window.open_ = (url) => new Promise((ok, fail) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') {
        window.got.push(JSON.parse(e.data));
      } else {
        const bytes = new Uint8Array(e.data);
        const nl = bytes.indexOf(10);
        const head = JSON.parse(new TextDecoder().decode(bytes.slice(0, nl)));
        head.bytes = Array.from(bytes.slice(nl + 1));
        window.got.push(head);
      }
    };
    ws.onclose = (e) => { window.closed = e.code; };
    ws.onopen = () => ok(ws);
    ws.onerror = () => fail(new Error('socket refused'));
  });
  window.waitFor = async (pred, ms = 5000) => {
    const end = Date.now() + ms;
    for (;;) {
      const m = window.got.find(pred);
      if (m) return m;
      if (Date.now() > end) throw new Error('no such message in ' + JSON.stringify(window.got));
      await new Promise((r) => setTimeout(r, 20));
    }
  };
`;

test('a page subscribes, publishes text and binary, subscribes more, and resumes over WebSocket', { timeout: 60_000 }, async () => {
  const hub = await startHub();
  const context = await browser();
  const page = context.pages()[0] || await context.newPage();
  await page.goto(`${hub.base}/healthz`);
  await page.evaluate(PAGE_HELPERS);
  const url = `/.well-known/mercure?topic=${encodeURIComponent(TOPIC)}&authorization=${JWT}`;
  await page.evaluate(async (u) => {
    window.ws = await window.open_(u.replace(/^/, `ws://${location.host}`));
    await window.waitFor((m) => m.op === 'subscribed' && m.sub === 'default');
  }, url);

  // Published over HTTP, received on the socket.
  await publishHttp(hub, { topic: TOPIC, data: 'from http', id: 'h1' });
  const fromHttp = await page.evaluate(() => window.waitFor((m) => m.op === 'update' && m.id === 'h1'));
  assert.equal(fromHttp.data, 'from http');
  assert.equal(fromHttp.topic, TOPIC);
  assert.equal(fromHttp.type, 'message');
  assert.equal(fromHttp.sub, 'default');

  // Published on the socket: acknowledged, and delivered back.
  const typed = await page.evaluate(async (topic) => {
    window.ws.send(JSON.stringify({ op: 'publish', ref: 't1', topics: [topic], data: 'typing…', type: 'typing' }));
    const ack = await window.waitFor((m) => m.op === 'published' && m.ref === 't1');
    const update = await window.waitFor((m) => m.op === 'update' && m.id === ack.id);
    return { ack, update };
  }, TOPIC);
  assert.match(typed.ack.id, /^urn:uuid:/);
  assert.equal(typed.update.data, 'typing…');
  assert.equal(typed.update.type, 'typing');

  // A binary frame: its JSON head, a newline, the bytes; it comes back as
  // a binary frame with the same bytes.
  const binary = await page.evaluate(async (topic) => {
    const head = new TextEncoder().encode(JSON.stringify({ op: 'publish', ref: 'b1', topics: [topic], media_type: 'application/octet-stream' }) + '\n');
    const payload = new Uint8Array([0, 1, 2, 254, 255, 10, 13]);
    const frame = new Uint8Array(head.length + payload.length);
    frame.set(head);
    frame.set(payload, head.length);
    window.ws.send(frame.buffer);
    const ack = await window.waitFor((m) => m.op === 'published' && m.ref === 'b1');
    return window.waitFor((m) => m.op === 'update' && m.id === ack.id);
  }, TOPIC);
  assert.deepEqual(binary.bytes, [0, 1, 2, 254, 255, 10, 13]);
  assert.equal(binary.media_type, 'application/octet-stream');

  // More selectors on the open socket.
  const more = await page.evaluate(async () => {
    window.ws.send(JSON.stringify({ op: 'subscribe', sub: 'rooms', topics: ['https://example.com/rooms/{id}'] }));
    return window.waitFor((m) => m.op === 'subscribed' && m.sub === 'rooms');
  });
  assert.equal(more.resumed_from, null);
  await publishHttp(hub, { topic: 'https://example.com/rooms/7', data: 'room 7', id: 'r7' });
  const room = await page.evaluate(() => window.waitFor((m) => m.op === 'update' && m.id === 'r7'));
  assert.equal(room.sub, 'rooms');

  // Disconnect, miss two updates, resume from the last id seen.
  await page.evaluate(() => { window.ws.close(); });
  await publishHttp(hub, { topic: TOPIC, data: 'missed 1', id: 'm1' });
  await publishHttp(hub, { topic: TOPIC, data: 'missed 2', id: 'm2' });
  const resumed = await page.evaluate(async (u) => {
    window.got = [];
    window.ws = await window.open_(`ws://${location.host}${u}&lastEventID=r7`);
    const ack = await window.waitFor((m) => m.op === 'subscribed');
    await window.waitFor((m) => m.id === 'm2');
    return { ack, ids: window.got.filter((m) => m.op === 'update').map((m) => m.id) };
  }, url);
  assert.equal(resumed.ack.resumed_from, 'r7');
  assert.deepEqual(resumed.ids, ['m1', 'm2']);
});

test('a page of another origin cannot open a socket', { timeout: 60_000 }, async () => {
  const hub = await startHub();
  // A second origin: a tiny site on another port.
  const site = createServer((_, res) => { res.writeHead(200, { 'content-type': 'text/html' }); res.end('<!doctype html><title>elsewhere</title>'); });
  await new Promise((ok) => site.listen(0, '127.0.0.1', ok));
  sites.push(site);
  const context = await browser();
  const page = context.pages()[0] || await context.newPage();
  await page.goto(`http://127.0.0.1:${site.address().port}/`);
  const outcome = await page.evaluate(async ({ port, jwt, topic }) => new Promise((ok) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/.well-known/mercure?topic=${encodeURIComponent(topic)}&authorization=${jwt}`);
    ws.onopen = () => ok('open');
    ws.onclose = (e) => ok(`closed ${e.code}`);
  }), { port: hub.port, jwt: JWT, topic: TOPIC });
  assert.equal(outcome, 'closed 1006', 'the handshake is refused (403): the page sees an abnormal close');

  // The same page from the hub's own origin opens one.
  await page.goto(`${hub.base}/healthz`);
  const own = await page.evaluate(async ({ jwt, topic }) => new Promise((ok) => {
    const ws = new WebSocket(`ws://${location.host}/.well-known/mercure?topic=${encodeURIComponent(topic)}&authorization=${jwt}`);
    ws.onopen = () => ok('open');
    ws.onclose = (e) => ok(`closed ${e.code}`);
  }), { jwt: JWT, topic: TOPIC });
  assert.equal(own, 'open');
});
