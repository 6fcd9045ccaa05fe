// Loads the live console in headless Chromium and checks that it shows what
// the test ingests. Driven by tests/tests/console.rs:
//
//   node console.mjs <base-url> <out-dir> <spec-json>
//
// spec: {"pages": [{"name", "query", "ready"?: css selector, "allowErrors"?: [substring],
//        "expect": {"presence": [[doc, user]], "sessions": [user],
//        "conflicts": [[userA, userB, paragraph]], "feed": [title substring],
//        "connections": [status substring]}}],
//        "latePages": [same as pages, opened after the expectations],
//        "recovery": {"page", "event"},   (optional, see below)
//        "waitForServer": bool,   (poll <base-url>/healthz before opening pages)
//        "deadlineAt": epoch ms,  (when everything must show; default 20 s after "ready")
//        "waitForGo": bool}  (print "launched" once the browser runs, then read
//                             "go <deadlineAt>" from stdin)
//  A conflict's users or paragraph may be null: any.
//  Also per page: "viewport": {width, height}; expect "sparklines": [user]
//  (a WPM line of 2+ points), "timelines": [user] (a state segment),
//  "fits": true (nothing wider than the window), "stats": N (the throughput
//  and lag charts with N+ points each, ingest, derived and lag above 0 at
//  some point).
//
// Prints "ready" once every page is subscribed (the test then ingests),
// "ok" and exits 0 when everything showed up; otherwise prints what is
// missing, saves a screenshot per page into <out-dir> and exits 1.
// Console errors (CSP violations included), page errors and accessibility
// violations (axe-core, WCAG 2.1 AA) fail the run.
//
// Needs INKSTREAM_TEST_CHROMIUM (Debian's /usr/bin/chromium) and
// INKSTREAM_TEST_BROWSER_DIR (a folder with node_modules/playwright-core and
// axe-core),
// both exported by tests/run.sh.

import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, outDir, specJson] = process.argv.slice(2);
const chromiumPath = process.env.INKSTREAM_TEST_CHROMIUM;
const browserDir = process.env.INKSTREAM_TEST_BROWSER_DIR;
if (!base || !outDir || !specJson) throw new Error('usage: node console.mjs <base-url> <out-dir> <spec-json>');
if (!chromiumPath || !browserDir) {
  throw new Error('INKSTREAM_TEST_CHROMIUM and INKSTREAM_TEST_BROWSER_DIR must be set: run the suite with tests/run.sh');
}
const spec = JSON.parse(specJson);
const require = createRequire(join(browserDir, 'package.json'));
const { chromium } = require('playwright-core');
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const started = Date.now();
const log = (msg) => console.error(`[console.mjs ${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
const DEADLINE_MS = 20_000; // for everything after "ready"

const profile = mkdtempSync(join(tmpdir(), 'inkstream-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromiumPath,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 1400, height: 900 },
  timeout: 15_000,
});

// "waitForGo": the deadline comes later, on stdin ("go <deadlineAt>"), once
// the test has started the server: so the browser's own startup (seconds on
// a loaded machine) never counts against the server's deadline.
if (spec.waitForGo) {
  console.log('launched');
  spec.deadlineAt = await goLine();
  log(`go: ${((spec.deadlineAt - Date.now()) / 1000).toFixed(1)} s to the deadline`);
}

const problems = [];
const pages = [];
// The recovery check's routed /ws/analytics connections (see routeForRecovery).
let firstRoute = null;
let held = null;
const fromServer = [];
const fromPage = [];
let failed = false;
try {
  if (spec.waitForServer) await waitForServer();
  log('server up');
  // Opened side by side: on a loaded machine each takes seconds.
  pages.push(...await Promise.all(spec.pages.map(async (p) => ({ ...p, page: await openPage(p) }))));
  // A page is ready when every socket is subscribed, or at `ready` (a CSS
  // selector) for pages expected not to get there (refused channels).
  for (const p of pages) await p.page.waitForSelector(p.ready ?? 'body[data-live="true"]', { timeout: 10_000 });
  log('every page subscribed');
  console.log('ready');

  const deadline = spec.deadlineAt ?? Date.now() + DEADLINE_MS;
  // Concurrently: each page must show everything by the deadline.
  await Promise.all(pages.map((p) => expectAll(p, deadline)));
  log('every expectation met');
  // Pages opened after the events: they can only show them from the
  // channels' history (the backfill of a first subscribe).
  for (const p of spec.latePages ?? []) {
    const late = { ...p, page: await openPage(p) };
    pages.push(late);
    await expectAll(late, deadline);
  }
  for (const p of pages) await checkAccessibility(p);
  if (spec.recovery) await checkRecovery(pages.find((p) => p.name === spec.recovery.page), deadline);
  if (problems.length) throw new Error(`${problems.length} problem(s):`);
  console.log('ok');
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.message}`);
  for (const p of problems) console.error(p);
} finally {
  for (const p of pages) {
    const file = join(outDir, `${p.name}.png`);
    await p.page.screenshot({ path: file, fullPage: true }).catch(() => {});
    log(`screenshot ${file}`);
  }
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

async function goLine() {
  const { createInterface } = await import('node:readline');
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    const m = /^go (\d+)$/.exec(line.trim());
    if (m) {
      lines.close();
      return Number(m[1]);
    }
  }
  throw new Error('stdin closed before "go <deadlineAt>"');
}

// The server under test may still be starting (the browser launches first,
// so its startup does not count against the server's deadline).
async function waitForServer() {
  const until = Date.now() + 20_000;
  for (;;) {
    const up = await fetch(`${base}/healthz`).then((r) => r.ok, () => false);
    if (up) return;
    if (Date.now() > until) throw new Error(`${base}/healthz did not answer within 20 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function openPage(p) {
  const page = await context.newPage();
  // `allowErrors`: substrings of console errors the page is expected to
  // log (a refused WebSocket upgrade is logged by the browser itself).
  const allowed = (text) => (p.allowErrors ?? []).some((a) => text.includes(a));
  page.on('console', (m) => {
    if (m.type() === 'error' && !allowed(m.text())) problems.push(`${p.name}: console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${p.name}: page error: ${e.message}`));
  if (spec.recovery?.page === p.name) await routeForRecovery(page);
  if (p.viewport) await page.setViewportSize(p.viewport);
  const resp = await page.goto(`${base}/${p.query}`);
  if (!resp.ok()) throw new Error(`${p.name}: GET / answered ${resp.status()}`);
  return page;
}

async function expectAll({ name, page, expect }, deadline) {
  const left = () => Math.max(1, deadline - Date.now());
  const check = async (what, fn) => {
    try {
      await fn();
      log(`${name}: ${what}`);
    } catch (e) {
      throw new Error(`${name}: ${what} not shown within the deadline (${e.message.split('\n')[0]})`);
    }
  };
  for (const [doc, user] of expect.presence ?? []) {
    await check(`${user} online on ${doc} with a cursor`, () => page
      .locator(`#presence [data-document="${doc}"] tr[data-user="${user}"][data-status="online"]`)
      .filter({ hasText: '¶' })
      .waitFor({ timeout: left() }));
  }
  for (const user of expect.sessions ?? []) {
    await check(`a session of ${user} with WPM > 0`, () => page.waitForFunction(
      (u) => Number.parseFloat(document.querySelector(`#sessions tr[data-user="${u}"] .wpm`)?.textContent) > 0,
      user, { timeout: left() }));
  }
  for (const user of expect.sparklines ?? []) {
    await check(`a WPM sparkline of ${user}`, () => page.waitForFunction(
      (u) => Number(document.querySelector(`#sessions tr[data-user="${u}"] svg.spark polyline`)?.dataset.points) >= 2,
      user, { timeout: left() }));
  }
  for (const user of expect.timelines ?? []) {
    await check(`a state timeline of ${user}`, () => page
      .locator(`#sessions tr[data-user="${user}"] svg.timeline rect.seg`).first()
      .waitFor({ timeout: left() }));
  }
  if (expect.stats) {
    const lines = [['throughput', 'ingest'], ['throughput', 'derived'], ['lag', 'lag']];
    for (const [chart, line] of lines) {
      await check(`the ${chart} chart's ${line} line with ${expect.stats}+ points, not all 0`, () => page.waitForFunction(
        ([c, l, n]) => {
          const el = document.querySelector(`#stats svg.${c} polyline.${l}`);
          return Number(el?.dataset.points) >= n && Number(el?.dataset.max) > 0;
        },
        [chart, line, expect.stats], { timeout: left() }));
    }
  }
  if (expect.fits) {
    const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    if (scroll > inner) throw new Error(`${name}: the page is ${scroll} px wide in a ${inner} px window`);
    log(`${name}: fits ${inner} px`);
  }
  for (const [a, b, paragraph] of expect.conflicts ?? []) {
    let conflicts = page.locator('#conflicts li[data-conflict]');
    for (const text of [a, b, paragraph === null ? null : `¶${paragraph} `]) {
      if (text !== null) conflicts = conflicts.filter({ hasText: text });
    }
    await check(`a conflict of ${a ?? 'anyone'} and ${b ?? 'anyone'} on ¶${paragraph ?? 'any'}`, () => conflicts
      .first()
      .waitFor({ timeout: left() }));
  }
  for (const text of expect.connections ?? []) {
    await check(`connection status "${text}"`, () => page
      .locator('#connections li').filter({ hasText: text }).first()
      .waitFor({ timeout: left() }));
  }
  for (const title of expect.feed ?? []) {
    await check(`feed item "${title}"`, () => page
      .locator('#feed li').filter({ hasText: title }).first()
      .waitFor({ timeout: left() }));
  }
}

// axe-core's WCAG 2.1 A/AA rules on the page as it is now (filled in by the
// expectations above). Evaluated through the DevTools protocol, which the
// page's CSP does not restrict.
async function checkAccessibility({ name, page }) {
  await page.evaluate(axeSource);
  for (const colorScheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme });
    await axeRun(`${name} (${colorScheme})`, page);
  }
  await page.emulateMedia({ colorScheme: 'light' });
}

async function axeRun(name, page) {
  const violations = await page.evaluate(async () => {
    const r = await globalThis.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
    });
    return r.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  });
  for (const v of violations) problems.push(`${name}: accessibility: ${v}`);
  log(`${name}: axe-core found ${violations.length} violation(s)`);
}

// Recovery: the page's /ws/analytics connection goes through a route. The
// first connection is passed through; when the check closes it, the page
// reconnects and its subscribe frames are held while an event is ingested,
// so that event can only reach the page as a replay (`since`).
async function routeForRecovery(page) {
  await page.routeWebSocket(/\/ws\/analytics/, (ws) => {
    if (!firstRoute) {
      firstRoute = { ws, server: ws.connectToServer() };
      return;
    }
    const pending = [];
    let server = null;
    ws.onMessage((m) => {
      fromPage.push(m);
      if (server) server.send(m);
      else pending.push(m);
    });
    held = {
      release() {
        server = ws.connectToServer();
        server.onMessage((m) => {
          fromServer.push(m);
          ws.send(m);
        });
        for (const m of pending) server.send(m);
      },
    };
  });
}

async function checkRecovery(p, deadline) {
  const { page } = p;
  const { event, user } = spec.recovery;
  firstRoute.ws.close({ code: 4000, reason: 'test: connection dropped' });
  firstRoute.server.close();
  await page.waitForSelector('body[data-live="false"]', { timeout: 5_000 });
  // Functions, not strings: the page's CSP forbids eval.
  const until = (fn, arg, what) => page.waitForFunction(fn, arg, { timeout: Math.max(1, deadline - Date.now()) })
    .catch((e) => { throw new Error(`recovery: ${what} (${e.message.split('\n')[0]})`); });
  while (!held || fromPage.length === 0) {
    if (Date.now() > deadline) throw new Error('recovery: the page did not reconnect');
    await new Promise((r) => setTimeout(r, 50));
  }
  // Ingested while the page is cut off from the server.
  const resp = await fetch(`${base}/v1/events`, {
    // Stamped now: an event time from the start of the test may already be
    // behind the watermark (late, dead-lettered) on a slow machine.
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...event, ts: Date.now() }),
  });
  if (resp.status !== 202) throw new Error(`recovery: ingest answered ${resp.status}`);
  await new Promise((r) => setTimeout(r, 1_000)); // the derived WPM is published live, in ms
  held.release();
  await until(() => document.body.dataset.live === 'true', null, 'the page did not come back live');
  const subs = fromPage.map((m) => JSON.parse(m)).filter((f) => f.op === 'subscribe');
  if (subs.length === 0 || !subs.every((f) => typeof f.since === 'number' && f.epoch)) {
    throw new Error(`recovery: resubscribed without since/epoch: ${JSON.stringify(subs)}`);
  }
  const replies = fromServer.map((m) => JSON.parse(m)).filter((f) => f.op === 'subscribed');
  if (!replies.some((f) => f.recovered === true)) {
    throw new Error(`recovery: the server recovered nothing: ${JSON.stringify(replies)}`);
  }
  const frames = () => JSON.stringify({ fromPage, fromServer: fromServer.map((m) => m.slice(0, 160)) });
  await until((u) => Number.parseFloat(document.querySelector(`#sessions tr[data-user="${u}"] .wpm`)?.textContent) > 0,
    user, `the event ingested while disconnected (${user}) did not show; frames: ${frames()}`);
  // Channels that had published nothing before the drop come back with a new
  // epoch: the page re-reads them from offset 1 instead of reporting a gap.
  const gap = await page.locator('#gap').textContent({ timeout: 500 }).catch(() => null);
  if (gap) throw new Error(`recovery: the page reports a gap: ${gap}`);
  log(`recovery: resubscribed with since; replies ${JSON.stringify(replies.map((f) => [f.channel, f.recovered]))}; ${user} shown`);
}
