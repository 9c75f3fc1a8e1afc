// Streaming publish, in a real browser: a fake model
// (examples/token-stream.mjs) streams 100 tokens at 50 per second into a
// topic with one `application/x-ndjson` request; a page of the hub's
// origin renders each token as its `EventSource` receives it. The test
// checks that every token is rendered, in order, while the request is
// still going (not when it ends), and reports the delay from the model's
// send to the page's render.
//
// Starts the real hub binary (HERALD_BIN, default ../../target/debug/herald)
// and drives Debian's Chromium (/usr/bin/chromium) through playwright-core.
// Run: `node --test tests/browser/`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { HERALD_BIN, CHROMIUM, ROOT, mintJwt, freePort, sleep } from './support.mjs';

const { streamTokens } = await import(join(ROOT, 'examples/token-stream.mjs'));

const SECRET = 'browser-tokens-' + randomBytes(16).toString('hex');
const PUBLISHER = mintJwt(SECRET, { mercure: { publish: ['*'] } });
const TOPIC = 'https://example.com/answers/42';
const TOKENS = 100;
const RATE = 50;

let child;
let context;
let dir;
after(async () => {
  if (context) await context.close().catch(() => {});
  if (child && child.exitCode === null) {
    await new Promise((ok) => { child.once('exit', ok); child.kill('SIGTERM'); });
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function startHub() {
  const port = await freePort();
  child = spawn(HERALD_BIN, ['serve', '--engine', 'memory', '--addr', `127.0.0.1:${port}`,
    '--publisher-jwt', SECRET, '--log', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let output = '';
  child.stderr.on('data', (d) => { output += d; });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`hub exited early:\n${output}`);
    try {
      if ((await fetch(`${base}/healthz`)).ok) return base;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`hub did not start:\n${output}`);
    await sleep(100);
  }
}

test('a page renders a streamed answer token by token', async () => {
  const base = await startHub();
  dir = mkdtempSync(join(tmpdir(), 'herald-tokens-'));
  context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
  });
  const page = await context.newPage();
  await page.goto(`${base}/healthz`);
  // The page: an answer that grows as tokens arrive, and when each came.
  await page.evaluate(async (topic) => {
    document.body.innerHTML = '<p id="answer"></p>';
    window.seen = [];
    const es = new EventSource(`/.well-known/mercure?topic=${encodeURIComponent(topic)}`);
    es.onmessage = (e) => {
      const t = JSON.parse(e.data);
      document.getElementById('answer').textContent += t.token;
      window.seen.push({ i: t.i, delay: Date.now() - t.sent, at: Date.now() });
    };
    await new Promise((ok) => { es.onopen = ok; });
  }, TOPIC);

  const started = Date.now();
  const answers = await streamTokens({
    hub: `${base}/.well-known/mercure`, token: PUBLISHER, topic: TOPIC, count: TOKENS, rate: RATE,
  });
  const ended = Date.now();
  assert.equal(answers.length, TOKENS);
  assert.ok(answers.every((a, n) => a.line === n + 1 && typeof a.id === 'string'), JSON.stringify(answers.find((a) => !a.id)));

  await page.waitForFunction((n) => window.seen.length >= n, TOKENS, { timeout: 5000 });
  const seen = await page.evaluate(() => window.seen);
  assert.deepEqual(seen.map((s) => s.i), [...Array(TOKENS).keys()], 'every token, in order');
  // Rendered as they came: the first token long before the request ended.
  const firstAt = seen[0].at - started;
  assert.ok(seen[0].at < ended - 1000, `first token rendered ${firstAt} ms after the start, the request took ${ended - started} ms`);
  const text = await page.textContent('#answer');
  assert.ok(text.startsWith('Server-Sent Events carry'), text);

  const delays = seen.map((s) => s.delay).sort((a, b) => a - b);
  const pick = (q) => delays[Math.min(delays.length - 1, Math.floor(q * delays.length))];
  console.log(`# ${TOKENS} tokens at ${RATE}/s over ${ended - started} ms; send -> render delay: `
    + `p50 ${pick(0.5)} ms, p99 ${pick(0.99)} ms, max ${delays[delays.length - 1]} ms`);
  assert.ok(pick(0.99) < 250, `p99 delay ${pick(0.99)} ms`);
});
