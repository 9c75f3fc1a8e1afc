// Browser tests of the hub's dashboard (ui/index.html served at `/`).
//
// Starts the real hub binary (HERALD_BIN, default ../../target/debug/herald),
// drives Debian's Chromium (/usr/bin/chromium) through playwright-core, and
// saves screenshots to target/screenshots/. Run: `node --test tests/browser/`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { HERALD_BIN, CHROMIUM, ROOT, mintJwt, freePort, sleep } from './support.mjs';

const SHOTS = join(ROOT, 'target/screenshots');
const SECRET = 'browser-test-' + randomBytes(16).toString('hex');
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// A token allowed to publish and subscribe to everything.
const JWT = mintJwt(SECRET, { mercure: { publish: ['*'], subscribe: ['*'] } });

const hubs = [];
const profiles = [];
const contexts = [];

// Starts `herald serve` on a free port; resolves once `/` answers.
async function startHub(extraArgs) {
  const port = await freePort();
  const args = ['serve', '--engine', 'memory', '--addr', `127.0.0.1:${port}`,
    '--publisher-jwt', SECRET, '--log', 'warn', ...extraArgs];
  const child = spawn(HERALD_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const hub = { child, base: `http://127.0.0.1:${port}`, output: '', exited: null };
  child.stdout.on('data', (d) => { hub.output += d; });
  child.stderr.on('data', (d) => { hub.output += d; });
  child.on('exit', (code, signal) => { hub.exited = { code, signal }; });
  hubs.push(hub);
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (hub.exited) throw new Error(`hub exited early (${JSON.stringify(hub.exited)}):\n${hub.output}`);
    try {
      const res = await fetch(hub.base + '/');
      if (res.ok) { await res.text(); return hub; }
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`hub did not start on ${hub.base}:\n${hub.output}`);
    await sleep(100);
  }
}

async function stopHub(hub) {
  if (hub.exited) return;
  const gone = new Promise((r) => hub.child.once('exit', r));
  process.kill(hub.child.pid, 'SIGTERM');
  const timer = setTimeout(() => { if (!hub.exited) process.kill(hub.child.pid, 'SIGKILL'); }, 5000);
  await gone;
  clearTimeout(timer);
}

// A browser with a fresh user-data dir, plus console/page error collection.
async function openPage(options) {
  const profile = mkdtempSync(join(tmpdir(), 'herald-chromium-'));
  profiles.push(profile);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, ...options,
  });
  contexts.push(context);
  const page = context.pages()[0] || await context.newPage();
  const errors = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()} (${msg.location().url || 'no url'})`);
  });
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('requestfailed', (req) => {
    // EventSource streams are cut when the page closes; only report real failures.
    const failure = req.failure()?.errorText || '';
    if (!/ERR_ABORTED/.test(failure)) errors.push(`requestfailed: ${req.url()} ${failure}`);
  });
  return { page, errors };
}

async function publish(hub, topic, data) {
  const res = await fetch(hub.base + '/.well-known/mercure', {
    method: 'POST',
    headers: { authorization: `Bearer ${JWT}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ topic, data }),
  });
  assert.equal(res.status, 200, `publish failed: ${res.status} ${await res.text()}`);
}

const numberOf = (page, sel) => page.$eval(sel, (el) => Number(el.dataset.value || el.textContent.replace(/[^0-9.]/g, '')));

let devFlag = false;
let hub;      // hub in production mode: stats need the admin token
let devHub;   // hub with the dev flag, when the binary has one

before(async () => {
  assert.ok(existsSync(HERALD_BIN), `hub binary not found at ${HERALD_BIN}: run \`cargo build -p herald-cli\` or set HERALD_BIN`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install chromium`);
  mkdirSync(SHOTS, { recursive: true });
  const help = spawnSync(HERALD_BIN, ['serve', '--help'], { encoding: 'utf8' });
  devFlag = /--dev\b/.test(help.stdout + help.stderr);
  hub = await startHub([]);
  if (devFlag) devHub = await startHub(['--dev']);
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  for (const h of hubs) await stopHub(h).catch(() => {});
  for (const p of profiles) rmSync(p, { recursive: true, force: true });
});

test('the stats stream is there and needs the admin token outside dev mode', async () => {
  const res = await fetch(hub.base + '/.well-known/herald/stats');
  assert.equal(res.status, 401, 'stats without a token must be refused');
  await res.body?.cancel();

  const ctrl = new AbortController();
  const ok = await fetch(`${hub.base}/.well-known/herald/stats?authorization=${JWT}`, { signal: ctrl.signal });
  assert.equal(ok.status, 200);
  assert.match(ok.headers.get('content-type') || '', /text\/event-stream/);
  ctrl.abort();
});

test('dashboard on a laptop: token, subscribe, publish, live stats, topics, chart', { timeout: 90_000 }, async () => {
  const { page, errors } = await openPage({ viewport: { width: 1366, height: 768 } });
  await page.goto(hub.base + '/');

  // Without a token the stats stream is refused and the page says why.
  await page.waitForFunction(() => /admin token required/.test(document.getElementById('stats-status').textContent));
  // Those refusals log the 401s as console errors; anything else is a bug.
  const unexpected = errors.splice(0).filter((e) => !/\b401\b/.test(e));
  assert.deepEqual(unexpected, []);

  await page.fill('#admin-token', JWT);
  await page.press('#admin-token', 'Enter');
  await page.waitForFunction(() => document.getElementById('stats-status').textContent === 'live');

  // The token is remembered: a reload goes live at once, with a clean console from here on.
  errors.length = 0;
  await page.reload();
  assert.equal(await page.inputValue('#admin-token'), JWT);
  await page.waitForFunction(() => document.getElementById('stats-status').textContent === 'live');
  await page.waitForFunction(() => document.getElementById('stat-engine').textContent.trim() !== '–');
  assert.match(await page.textContent('#stat-uptime'), /^\d+(d|h|m|s)/);

  // Subscribe to everything from the page.
  await page.fill('#selectors', '*');
  await page.click('#connect');
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open');

  // Publish from the page's form; the event shows up in the log.
  const marker = 'from-the-form-' + randomBytes(4).toString('hex');
  await page.fill('#pub-topics', 'https://example.com/books/1');
  await page.fill('#pub-data', JSON.stringify({ marker }));
  await page.fill('#pub-token', JWT);
  await page.click('#publish');
  await page.waitForSelector('#pub-result.ok');
  await page.locator('#log .event', { hasText: marker }).first().waitFor();
  assert.equal(await page.textContent('#count'), '1');

  // The log filter hides non-matching events.
  await page.fill('#filter', 'no-such-event');
  assert.equal(await page.locator('#log .event:visible').count(), 0);
  await page.fill('#filter', marker);
  assert.equal(await page.locator('#log .event:visible').count(), 1);
  await page.fill('#filter', '');

  // Connections count our subscription.
  await page.waitForFunction(() => Number(document.getElementById('stat-connections').dataset.value) >= 1);

  // A burst of updates over ~3 s moves both rates above zero.
  const sawRates = page.waitForFunction(() => {
    const v = (id) => Number(document.getElementById(id).dataset.value);
    window.__maxIn = Math.max(window.__maxIn || 0, v('stat-in-rate'));
    window.__maxOut = Math.max(window.__maxOut || 0, v('stat-out-rate'));
    return window.__maxIn > 0 && window.__maxOut > 0;
  }, null, { polling: 100, timeout: 20_000 });
  for (let i = 0; i < 20; i++) {
    await publish(hub, `https://example.com/burst/${i % 4}`, `burst ${i}`);
    await sleep(150);
  }
  await sawRates;
  await page.locator('#log .event', { hasText: 'burst 19' }).first().waitFor();
  // Totals count the form's update and the burst (they arrive with the next sample).
  await page.waitForFunction(() => ['stat-in-sub', 'stat-out-sub']
    .every((id) => Number(document.getElementById(id).dataset.value) >= 21), null, { timeout: 5000 });
  assert.equal(await numberOf(page, '#stat-drops'), 0);

  // The topics table lists the subscription.
  await page.waitForSelector('#topics tr.topic-row');
  const rows = await page.$$eval('#topics tr.topic-row', (trs) => trs.map((tr) => ({
    topic: tr.dataset.topic, subscribers: Number(tr.querySelector('.num').textContent),
  })));
  assert.ok(rows.some((r) => r.topic === '*' && r.subscribers >= 1), `topics: ${JSON.stringify(rows)}`);

  // The chart has been drawn (some non-transparent pixels) and fills the width.
  const chart = await page.$eval('#chart', (c) => {
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i]) painted++;
    return { painted, width: c.getBoundingClientRect().width, panel: c.closest('section').getBoundingClientRect().width };
  });
  assert.ok(chart.painted > 1000, 'chart is drawn');
  assert.ok(chart.width > chart.panel * 0.9, 'chart spans its panel');

  // Stat cards sit on one row at 1366 px; nothing overflows sideways.
  const tops = await page.$$eval('.card', (cards) => cards.map((c) => Math.round(c.getBoundingClientRect().top)));
  assert.equal(new Set(tops).size, 1, `cards on one row: ${tops}`);
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= innerWidth));

  await sleep(1200);   // one more sample, so the chart shows the burst
  await page.screenshot({ path: join(SHOTS, 'dashboard-laptop.png'), fullPage: true });
  assert.deepEqual(errors, [], 'no console errors');
});

test('dashboard on a phone: cards wrap, panels stack, no sideways scroll', { timeout: 60_000 }, async () => {
  const { page, errors } = await openPage({
    viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2,
  });
  await page.addInitScript((token) => localStorage.setItem('herald.adminToken', token), JWT);
  await page.goto(hub.base + '/');
  await page.waitForFunction(() => document.getElementById('stats-status').textContent === 'live');
  await page.fill('#pub-token', JWT);
  await page.click('#connect');
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open');
  await page.click('#publish');
  await page.locator('#log .event').first().waitFor();
  await page.waitForSelector('#topics tr.topic-row');

  const layout = await page.evaluate(() => {
    const box = (sel) => document.querySelector(sel).getBoundingClientRect();
    const cards = [...document.querySelectorAll('.card')].map((c) => c.getBoundingClientRect());
    return {
      scrollWidth: document.documentElement.scrollWidth, innerWidth,
      cardsPerRow: cards.filter((c) => Math.round(c.top) === Math.round(cards[0].top)).length,
      chartWidth: box('#chart').width, topics: box('#topics-panel'), sub: box('#sub-panel'), log: box('#log-panel'),
    };
  });
  assert.ok(layout.scrollWidth <= layout.innerWidth, `no sideways scroll (${layout.scrollWidth} > ${layout.innerWidth})`);
  assert.ok(layout.cardsPerRow >= 2 && layout.cardsPerRow <= 3, `cards wrap: ${layout.cardsPerRow} per row`);
  assert.ok(layout.chartWidth > 320, 'chart is full width');
  assert.ok(layout.topics.bottom <= layout.sub.top && layout.sub.bottom <= layout.log.top, 'panels stack');
  assert.ok(Math.abs(layout.topics.width - layout.log.width) < 1, 'panels share the width');

  await page.screenshot({ path: join(SHOTS, 'dashboard-phone.png'), fullPage: true });
  assert.deepEqual(errors, [], 'no console errors');
});

test('dev mode: the stats stream opens without a token', { timeout: 30_000 }, async (t) => {
  if (!devFlag) { t.skip('this herald has no --dev flag'); return; }
  const { page, errors } = await openPage({ viewport: { width: 1366, height: 768 } });
  await page.goto(devHub.base + '/');
  await page.waitForFunction(() => document.getElementById('stats-status').textContent === 'live');
  assert.equal(await page.inputValue('#admin-token'), '');
  assert.deepEqual(errors, []);
});
