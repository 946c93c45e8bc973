// The console's browser test, run by scripts/browser.sh against the real binary,
// PostgreSQL and RabbitMQ: headless Chromium (Debian's, /usr/bin/chromium) driven by
// playwright-core. Environment: BASE (the console's URL), CONFIG (the configuration
// the stage workers read), WORKER (the stage_worker binary), SHOTS (directory of the
// screenshots), HOSTILE (the failure message the naabum8 worker reports).
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const { BASE, CONFIG, WORKER, SHOTS, HOSTILE } = process.env;
const TIMEOUT = 60_000;
const workers = [];
let failures = 0;

function check(cond, what) {
  if (!cond) { failures++; console.error('FAIL: ' + what); } else console.log('ok: ' + what);
}
function worker(stage, extra) {
  const p = spawn(WORKER, ['--stage', stage, '--config', CONFIG, '--min-ms', '200', '--max-ms', '400', ...extra],
    { stdio: ['ignore', 'ignore', 'inherit'] });
  workers.push(p);
  return p;
}
// Polls `cond` until it holds (at most TIMEOUT); throws naming `what` otherwise.
async function until(cond, what) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    try { if (await cond()) return; } catch (e) { /* not yet */ }
    if (Date.now() > deadline) throw new Error('not within ' + TIMEOUT + ' ms: ' + what);
    await new Promise((r) => setTimeout(r, 200));
  }
}
async function api(path) {
  const res = await fetch(BASE + path);
  return res.json();
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(BASE)) foreign.push(r.url()); });
  page.on('pageerror', (e) => { failures++; console.error('FAIL: page error ' + e.message); });
  page.on('dialog', (d) => d.accept());
  page.setDefaultTimeout(TIMEOUT);

  // 1. The list shows the seeded workflows (one per enabled domain).
  await page.goto(BASE + '/');
  for (const d of ['alpha.example', 'beta.example', 'gamma.example']) {
    await page.locator('#rows tr', { hasText: d }).first().waitFor();
  }
  check(true, 'the list shows the seeded workflows');
  await page.locator('#live.on').waitFor();
  check(true, 'the live stream is connected');
  await page.screenshot({ path: SHOTS + '/console-list.png' });

  // 2. The pause button pauses (confirmed; the API agrees).
  const alpha = page.locator('#rows tr', { hasText: 'alpha.example' }).first();
  const alphaId = await alpha.getAttribute('data-id');
  await alpha.locator('button[data-action="pause"]').click();
  await page.locator(`#rows tr[data-id="${alphaId}"] td.st-paused`).waitFor();
  check((await api('/api/orchestratorm8/workflows/' + alphaId)).status === 'paused', 'the pause button pauses');
  // Pausing again is refused by the API, and the refusal is shown.
  const r = await page.evaluate(async (id) => (await fetch('/api/orchestratorm8/workflows/' + id + '/pause', { method: 'POST' })).status, alphaId);
  check(r === 409, 'a second pause is refused by the API (409)');

  // 3. A stage completing appears without a reload.
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  worker('asmm8', ['--failure-rate', '0']);
  await page.locator('#rows tr', { hasText: 'beta.example' }).locator('.s-completed', { hasText: 'asmm8' }).waitFor();
  check(navigations.length === 0, 'a stage completing appears without a reload');
  await page.screenshot({ path: SHOTS + '/console-live.png' });

  // 4. The hostile detail is shown as text.
  worker('naabum8', ['--failure-rate', '1', '--failure-message', HOSTILE]);
  const failed = page.locator('#rows tr', { hasText: 'beta.example' }).locator('td.st-failed');
  await failed.waitFor();
  const beta = page.locator('#rows tr', { hasText: 'beta.example' }).first();
  await beta.locator('td.id').click();
  await page.locator('#detail-stages td.detail', { hasText: 'script' }).first().waitFor();
  const shown = await page.locator('#detail-stages td.detail', { hasText: 'script' }).first().textContent();
  // The detail is a JSON object (the worker's report): shown as its JSON text.
  let error = null;
  try { error = JSON.parse(shown).error; } catch (e) { error = null; }
  check(error === HOSTILE, 'the hostile detail is shown as text: ' + shown);
  check(await page.locator('#detail img, #rows img').count() === 0, 'no element was created from the detail');
  check(await page.evaluate(() => window.__xss === undefined), 'no script ran from the detail');
  await page.screenshot({ path: SHOTS + '/console-detail.png' });

  // 5. Retry runs the failed workflow again (202), confirmed.
  await beta.locator('button[data-action="retry"]').click();
  await page.locator('#message.ok', { hasText: 'retry' }).waitFor();
  check(['pending', 'running'].includes((await api('/api/orchestratorm8/workflows/' + (await beta.getAttribute('data-id')))).status), 'retry runs the workflow again');

  // 6. Fits 1280x800 without horizontal scrolling; nothing requested from another host.
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 1280, 'fits 1280 px wide (scroll width ' + width + ')');
  check(foreign.length === 0, 'no request to another host: ' + foreign.join(', '));
  await page.screenshot({ path: SHOTS + '/console.png' });

  // 6b. The replicas view lists every live replica (here the one, leading).
  await page.goto(BASE + '/#replicas');
  await page.locator('#replica-rows tr', { hasText: 'leader' }).first().waitFor();
  check(await page.locator('#replica-rows tr').count() === 1, 'the replicas view lists the one replica, as leader');
  await page.screenshot({ path: SHOTS + '/console-replicas.png' });
  await page.goto(BASE + '/');

  // 7. A token set while the console runs (HTTP.api_token is live): the console asks
  // for it once, keeps it in this tab only (sessionStorage), never puts it in a URL,
  // and the server never logs it. The open configuration is put back afterwards.
  const TOKEN = 'browser-token-' + process.pid + '-' + Date.now();
  const original = readFileSync(CONFIG, 'utf8');
  const withToken = original.replace(/^(\s*api_token:\s*)""/m, `$1"${TOKEN}"`);
  check(withToken !== original, 'the configuration has an empty HTTP.api_token to set');
  const urls = [];
  try {
    writeFileSync(CONFIG, withToken);
    await until(async () => (await fetch(BASE + '/api/orchestratorm8/workflows')).status === 401,
      'the API requires the token after the live reload');
    page.on('request', (r) => urls.push(r.url()));
    await page.reload();
    await page.locator('#token-form').waitFor({ state: 'visible' });
    check(await page.locator('#rows tr', { hasText: 'alpha.example' }).count() === 0,
      'nothing is listed before the token is given');
    await page.fill('#token', TOKEN);
    await page.press('#token', 'Enter');
    await page.locator('#rows tr', { hasText: 'alpha.example' }).first().waitFor();
    check(await page.locator('#token-form').isHidden(), 'the token form closes once the token works');
    check(await page.evaluate((k) => sessionStorage.getItem(k), 'orchestratorm8.token') === TOKEN,
      'the token is kept in the tab (sessionStorage)');
    check(await page.evaluate(() => localStorage.length === 0 && document.cookie === ''),
      'the token is kept nowhere else (no localStorage, no cookie)');
    // Kept for this tab: a reload lists at once, without asking.
    await page.reload();
    await page.locator('#rows tr', { hasText: 'alpha.example' }).first().waitFor();
    check(await page.locator('#token-form').isHidden(), 'a reload of the tab does not ask again');
    // Another tab asks again.
    const other = await context.newPage();
    await other.goto(BASE + '/');
    await other.locator('#token-form').waitFor({ state: 'visible' });
    check(true, 'another tab asks for the token');
    await other.close();
    check(urls.length > 0 && urls.every((u) => !u.includes(TOKEN)), 'the token is never in a URL');
    const log = readFileSync(SHOTS + '/orchestratorm8.log', 'utf8');
    check(!log.includes(TOKEN), 'the server never logs the token');
  } finally {
    writeFileSync(CONFIG, original);
    await until(async () => (await fetch(BASE + '/api/orchestratorm8/workflows')).status === 200,
      'the API is open again after the configuration is put back');
  }
} catch (e) {
  failures++;
  console.error('FAIL: ' + (e && e.stack ? e.stack : e));
} finally {
  for (const w of workers) w.kill('SIGTERM');
  await browser.close();
}
if (failures) { console.error(failures + ' check(s) failed'); process.exit(1); }
console.log('browser test passed');
