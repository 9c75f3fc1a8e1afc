// The log-tail pattern, in a real browser: rows an application inserts
// into a PostgreSQL outbox table appear in a page's EventSource, through a
// `[[bridge]]` section of `herald serve`. One `psql` session inserts the
// rows at a steady rate, each stamped with the database's
// `clock_timestamp()`; the page stamps each as it renders it. The test
// checks that every row is rendered once, in order, and reports the
// insert -> render delay (p50, p99) for BENCHMARKS.md.
//
// Needs the PostgreSQL named by HERALD_TEST_POSTGRES_URL (and `psql`);
// says it was skipped without it. HERALD_BRIDGE_ROWS (default 250) and
// HERALD_BRIDGE_RATE (rows per second, default 50) size the run.
// Starts the real hub binary (HERALD_BIN, default ../../target/debug/herald)
// and drives Debian's Chromium (/usr/bin/chromium) through playwright-core.
// Run: `node --test tests/browser/`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { HERALD_BIN, CHROMIUM, freePort, sleep } from './support.mjs';

const PG = process.env.HERALD_TEST_POSTGRES_URL;
const ROWS = Number(process.env.HERALD_BRIDGE_ROWS || 250);
const RATE = Number(process.env.HERALD_BRIDGE_RATE || 50);
const TABLE = 'herald_browser_' + randomBytes(6).toString('hex');
const TOPIC = 'https://example.com/logs/app';

let child;
let context;
let dir;
after(async () => {
  if (context) await context.close().catch(() => {});
  if (child && child.exitCode === null) {
    await new Promise((ok) => { child.once('exit', ok); child.kill('SIGTERM'); });
  }
  if (PG) await psql(`DROP TABLE IF EXISTS ${TABLE}; DROP FUNCTION IF EXISTS ${TABLE}_notify();`).catch(() => {});
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// Runs SQL in one psql session, fed line by line: `lines` is an async
// iterable of statements (or one string).
function psql(lines) {
  return new Promise((ok, fail) => {
    const p = spawn('psql', [PG, '-q', '-v', 'ON_ERROR_STOP=1'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => { err += d; });
    p.on('error', fail);
    p.on('exit', (code) => (code === 0 ? ok() : fail(new Error(`psql exited ${code}: ${err}`))));
    (async () => {
      if (typeof lines === 'string') p.stdin.write(lines + '\n');
      else for await (const l of lines) p.stdin.write(l + '\n');
      p.stdin.end();
    })().catch(fail);
  });
}

async function startHub() {
  const port = await freePort();
  const config = join(dir, 'herald.toml');
  writeFileSync(config, [
    `addr = "127.0.0.1:${port}"`, 'engine = "memory"', 'log = "warn"',
    '[[bridge]]', 'source = "postgres"', `postgres = "${PG}"`, `outbox = "${TABLE}"`,
    'payload = "json"', `topic = "${TOPIC}"`, 'poll = "5s"', '',
  ].join('\n'));
  child = spawn(HERALD_BIN, ['serve', '--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
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

test('rows inserted in PostgreSQL appear in a browser tab', { skip: PG ? false : 'HERALD_TEST_POSTGRES_URL is not set' }, async () => {
  dir = mkdtempSync(join(tmpdir(), 'herald-bridge-'));
  const base = await startHub();
  // The bridge makes the table; wait until it exists.
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await psql(`SELECT 1 FROM ${TABLE} LIMIT 0;`);
      break;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(100);
    }
  }
  context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
  });
  const page = await context.newPage();
  await page.goto(`${base}/healthz`);
  await page.evaluate(async (topic) => {
    document.body.innerHTML = '<pre id="log"></pre>';
    window.seen = [];
    const es = new EventSource(`/.well-known/mercure?topic=${encodeURIComponent(topic)}`);
    es.onmessage = (e) => {
      const row = JSON.parse(e.data);
      document.getElementById('log').textContent += `${row.i} ${row.line}\n`;
      window.seen.push({ i: row.i, delay: Date.now() - row.t });
    };
    await new Promise((ok) => { es.onopen = ok; });
  }, TOPIC);

  // One session inserting at RATE rows per second, each stamped by the
  // database as it is inserted (autocommit: one transaction per row).
  async function* rows() {
    const start = Date.now();
    for (let i = 0; i < ROWS; i++) {
      const wait = start + (i * 1000) / RATE - Date.now();
      if (wait > 0) await sleep(wait);
      yield `INSERT INTO ${TABLE} (channel, payload) VALUES ('app', json_build_object('data', json_build_object('i', ${i}, 'line', 'GET /orders/${i} 200', 't', floor(extract(epoch FROM clock_timestamp()) * 1000))::text)::text);`;
    }
  }
  await psql(rows());

  await page.waitForFunction((n) => window.seen.length >= n, ROWS, { timeout: 10_000 });
  const seen = await page.evaluate(() => window.seen);
  assert.deepEqual(seen.map((s) => s.i), [...Array(ROWS).keys()], 'every row once, in order');
  const text = await page.textContent('#log');
  assert.ok(text.startsWith('0 GET /orders/0 200\n'), text.slice(0, 80));

  const delays = seen.map((s) => s.delay).sort((a, b) => a - b);
  const pick = (q) => delays[Math.min(delays.length - 1, Math.floor(q * delays.length))];
  console.log(`# ${ROWS} rows at ${RATE}/s; insert -> render delay: `
    + `p50 ${pick(0.5)} ms, p99 ${pick(0.99)} ms, max ${delays[delays.length - 1]} ms`);
});
