// Why HTTP/2 matters for SSE, in a real browser: one page opens 20
// `EventSource`s on one origin. Against herald over TLS (ALPN h2) all 20
// open and receive; against the same hub over plain HTTP/1.1, Chromium's
// limit of six connections per origin leaves the others waiting.
//
// Starts the real hub binary (HERALD_BIN, default ../../target/debug/herald)
// with a throwaway self-signed certificate made by `openssl`, and drives
// Debian's Chromium (/usr/bin/chromium) through playwright-core.
// Run: `node --test tests/browser/`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { HERALD_BIN, CHROMIUM, mintJwt, freePort, sleep } from './support.mjs';

const SECRET = 'browser-h2-' + randomBytes(16).toString('hex');
const STREAMS = 20;

const JWT = mintJwt(SECRET, { mercure: { publish: ['*'] } });

const dirs = [];
const children = [];
const contexts = [];

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// Starts a hub; `tls` is [cert, key] or null. Resolves with its base URL
// once /healthz answers (checked with curl, which trusts nothing here).
async function startHub(tls) {
  const port = await freePort();
  const args = ['serve', '--engine', 'memory', '--addr', `127.0.0.1:${port}`,
    '--publisher-jwt', SECRET, '--log', 'warn'];
  if (tls) args.push('--tls-cert', tls[0], '--tls-key', tls[1]);
  const child = spawn(HERALD_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let output = '';
  child.stderr.on('data', (d) => { output += d; });
  children.push(child);
  const base = `${tls ? 'https' : 'http'}://localhost:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`hub exited early:\n${output}`);
    try {
      execFileSync('curl', ['-skf', '--resolve', `localhost:${port}:127.0.0.1`, `${base}/healthz`], { stdio: 'ignore' });
      return { base, port };
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`hub did not start:\n${output}`);
    await sleep(100);
  }
}

// Publishes one update to every test topic.
function publishAll(hub, data) {
  const form = ['-d', `data=${data}`];
  for (let i = 0; i < STREAMS; i++) form.push('-d', `topic=https://example.com/t/${i}`);
  const out = execFileSync('curl', ['-skf', '--resolve', `localhost:${hub.port}:127.0.0.1`,
    '-H', `Authorization: Bearer ${JWT}`, ...form, `${hub.base}/.well-known/mercure`], { encoding: 'utf8' });
  assert.match(out, /^urn:uuid:/);
}

// Opens STREAMS EventSources from a page of the hub's origin; waits, then
// publishes and reports how many opened and how many received.
async function twentyStreams(hub) {
  const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'herald-h2-')), {
    executablePath: CHROMIUM, headless: true, ignoreHTTPSErrors: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      `--host-resolver-rules=MAP localhost 127.0.0.1`],
  });
  contexts.push(context);
  const page = context.pages()[0] || await context.newPage();
  await page.goto(`${hub.base}/healthz`);
  await page.evaluate((n) => {
    window.opened = 0;
    window.received = 0;
    for (let i = 0; i < n; i++) {
      const es = new EventSource(`/.well-known/mercure?topic=${encodeURIComponent(`https://example.com/t/${i}`)}`);
      es.onopen = () => { window.opened++; };
      es.onmessage = () => { window.received++; };
    }
  }, STREAMS);
  // Give every stream time to open (they open within milliseconds when
  // they can at all).
  await sleep(3000);
  publishAll(hub, 'hello');
  await sleep(2000);
  const result = await page.evaluate(() => ({ opened: window.opened, received: window.received }));
  const protocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol);
  await context.close();
  return { ...result, protocol };
}

test('20 EventSources on one page: all live over HTTP/2, six over HTTP/1.1', { timeout: 90_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'herald-cert-'));
  dirs.push(dir);
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
    '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost'], { stdio: 'ignore' });

  const tlsHub = await startHub([cert, key]);
  const h2 = await twentyStreams(tlsHub);
  console.log(`over TLS: ${JSON.stringify(h2)}`);
  assert.equal(h2.protocol, 'h2');
  assert.equal(h2.opened, STREAMS, 'every EventSource opens over HTTP/2');
  assert.equal(h2.received, STREAMS, 'every EventSource receives over HTTP/2');

  const plainHub = await startHub(null);
  const h1 = await twentyStreams(plainHub);
  console.log(`over HTTP/1.1: ${JSON.stringify(h1)}`);
  assert.equal(h1.protocol, 'http/1.1');
  assert.ok(h1.opened <= 6, `at most six streams open over HTTP/1.1, not ${h1.opened}`);
  assert.ok(h1.received < STREAMS, 'the streams past six stall over HTTP/1.1');
});
