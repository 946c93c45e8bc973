// The console's browser test, run by scripts/browser.sh against the real binary,
// PostgreSQL and RabbitMQ: headless Chromium (Debian's, /usr/bin/chromium) driven by
// playwright-core. Environment: BASE (the console's URL), CONFIG (the configuration
// the stage workers read), WORKER (the stage_worker binary), SHOTS (directory of the
// screenshots), HOSTILE (the failure message the naabum8 worker reports).
import { spawn } from 'node:child_process';
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
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
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
} catch (e) {
  failures++;
  console.error('FAIL: ' + (e && e.stack ? e.stack : e));
} finally {
  for (const w of workers) w.kill('SIGTERM');
  await browser.close();
}
if (failures) { console.error(failures + ' check(s) failed'); process.exit(1); }
console.log('browser test passed');
