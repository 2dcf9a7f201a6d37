// Browser tests for the web console (reference: Health and console endpoints): start the real gateway in demo mode, drive
// /console in Debian's Chromium through playwright-core, and check every action against the
// gateway itself (the keys the page hands out are used for real requests from Node).
//
//   cd tests/console && npm install && cd ../.. && node --test tests/console/
//
// Env: KEYGATE_BIN (default target/debug/keygate), CHROMIUM (default /usr/bin/chromium),
// KEYGATE_UPDATE_DOCS_SCREENSHOT=1 to also refresh docs/console.png.
// Screenshots of each step go to test-output/console/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.resolve(ROOT, process.env.KEYGATE_BIN || 'target/debug/keygate');
const OUT = path.join(ROOT, 'test-output/console');
const MODEL = 'llama-3.1-8b-instruct';
const STEP = { timeout: 20_000 };

let gateway; // the child process
let addr; // http://127.0.0.1:PORT
let adminKey;
let demoKey;
let browser;
let context;
let page;
const problems = []; // console errors/warnings, page errors, CSP violations
let expectedNetworkErrors = null; // statuses whose "Failed to load resource" lines are expected now

// ---- gateway ----------------------------------------------------------------------------

function startGateway() {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['demo', '--listen', '127.0.0.1:0'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
    let out = '';
    let err = '';
    const timer = setTimeout(() => fail(new Error('the gateway did not start within 15 s')), 15_000);
    function fail(e) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${e.message}\nstdout:\n${out}\nstderr:\n${err}`));
    }
    child.on('error', fail);
    child.on('exit', (code) => fail(new Error(`the gateway exited early (code ${code})`)));
    child.stderr.on('data', (d) => { err += d; });
    child.stdout.on('data', (d) => {
      out += d;
      const listening = /keygate listening on (http:\/\/\S+)/.exec(out);
      const admin = /Admin key[^:]*:\s*(\S+)/.exec(out);
      const demo = /Demo key[^:]*:\s*(\S+)/.exec(out);
      if (listening && admin && demo) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve({ child, addr: listening[1], admin: admin[1], demo: demo[1] });
      }
    });
  });
}

function stopGateway() {
  if (!gateway || gateway.exitCode !== null || gateway.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => gateway.kill('SIGKILL'), 5_000);
    gateway.once('exit', () => { clearTimeout(kill); resolve(); });
    gateway.kill('SIGTERM');
  });
}

async function chat(key) {
  const res = await fetch(`${addr}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hello' }] }),
  });
  const body = await res.json();
  return { status: res.status, body };
}

// ---- browser helpers --------------------------------------------------------------------

async function shot(name, options = {}) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, ...options });
  return file;
}

const row = (name) => page.locator('#keys tbody tr').filter({ has: page.locator('button.link', { hasText: new RegExp(`^${name}$`) }) });
const cell = (name, label) => row(name).locator(`td[data-label="${label}"]`);

// Reads the plaintext out of the "save your key" dialog, then closes it the only way there is.
async function takeSecret() {
  const dlg = page.locator('#secret-dialog');
  await dlg.waitFor({ state: 'visible' });
  const key = await page.locator('#secret-key').textContent();
  assert.match(key, /^sk_kg_[0-9A-Za-z]{38,}$/);
  const snippet = await page.locator('#secret-snippet').textContent();
  assert.ok(snippet.includes(`base_url="${addr}/v1"`), snippet);
  assert.ok(snippet.includes(`api_key="${key}"`), snippet);
  assert.equal(await page.evaluate(() => document.activeElement.closest('dialog')?.id), 'secret-dialog',
    'focus moves into the dialog');

  // Escape (twice: Chrome lets a second, unprompted Escape through a cancelled `cancel`) does not close it.
  await page.keyboard.press('Escape');
  await page.keyboard.press('Escape');
  assert.equal(await dlg.evaluate((d) => d.open), true, 'Escape must not close the key dialog');

  await page.locator('#copy').click();
  await page.locator('#copy-status').filter({ hasText: 'Copied' }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key, 'the copy button copies the key');
  return key;
}

async function closeSecret(key) {
  await page.locator('#saved').click();
  await page.locator('#secret-dialog').waitFor({ state: 'hidden' });
  const leaks = await page.evaluate((k) => ({
    html: document.documentElement.outerHTML.includes(k),
    text: document.body.innerText.includes(k),
    inputs: [...document.querySelectorAll('input, textarea')].some((i) => i.value.includes(k)),
    selection: String(window.getSelection()).includes(k),
  }), key);
  assert.deepEqual(leaks, { html: false, text: false, inputs: false, selection: false }, 'the plaintext left the page');
}

// Waits until the focused element matches `selector` (and has `text`, if given).
async function focusOn(selector, text) {
  await page.waitForFunction(([sel, t]) => {
    const el = document.activeElement;
    return el && el.matches(sel) && (t == null || el.textContent === t);
  }, [selector, text], { timeout: 3_000 });
}

function assertNoProblems() {
  assert.deepEqual(problems, [], 'console errors, page errors or CSP violations');
}

// ---- setup ------------------------------------------------------------------------------

before(async () => {
  mkdirSync(OUT, { recursive: true });
  ({ child: gateway, addr, admin: adminKey, demo: demoKey } = await startGateway());
  process.on('exit', () => gateway && gateway.kill('SIGKILL'));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: addr });
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`);
    });
  });
  page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on('console', (m) => {
    if (m.type() !== 'error' && m.type() !== 'warning') return;
    const net = /^Failed to load resource: the server responded with a status of (\d+)/.exec(m.text());
    if (net && expectedNetworkErrors && expectedNetworkErrors.includes(Number(net[1]))) return;
    problems.push(`console.${m.type()}: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
});

after(async () => {
  await browser?.close().catch(() => {});
  await stopGateway();
});

// ---- the tests, in order ----------------------------------------------------------------

test('the page and its assets are served with a strict CSP', STEP, async () => {
  for (const p of ['/console', '/console/console.js', '/console/console.css']) {
    const res = await fetch(addr + p);
    assert.equal(res.status, 200, p);
    const csp = res.headers.get('content-security-policy');
    assert.match(csp, /default-src 'none'/, p);
    assert.match(csp, /script-src 'self'/, p);
  }
});

test('a wrong or non-admin key is refused in plain words', STEP, async () => {
  await page.goto(`${addr}/console`);
  await page.locator('#signin-key').waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'signin-key');
  expectedNetworkErrors = [401, 403];

  await page.fill('#signin-key', `sk_kg_${'A'.repeat(44)}`);
  await page.keyboard.press('Enter');
  const err = page.locator('#signin-error');
  await err.waitFor({ state: 'visible' });
  assert.match(await err.textContent(), /^Sign-in refused: Incorrect API key provided/);
  await shot('01-wrong-key');

  await page.fill('#signin-key', demoKey); // valid, but inference scopes only
  await page.locator('#signin-form button[type=submit]').click();
  await err.filter({ hasText: '`admin` scope' }).waitFor();
  assert.equal(await page.locator('#keys-view').isVisible(), false);
  assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
  expectedNetworkErrors = null;
  assertNoProblems();
});

test('sign in with the admin key, kept in sessionStorage only', STEP, async () => {
  await page.fill('#signin-key', adminKey);
  await page.keyboard.press('Enter');
  await page.locator('#keys-view').waitFor({ state: 'visible' });
  await row('demo').waitFor();
  await row('demo-admin').waitFor();
  assert.equal(await page.locator('#signin-error').isVisible(), false);
  assert.match(await page.locator('#who-key').textContent(), /sk_kg_…/);
  assert.ok((await row('demo-admin').textContent()).includes('(you)'));
  const storage = await page.evaluate(() => ({
    session: Object.fromEntries(Object.entries(sessionStorage)),
    local: localStorage.length,
    cookie: document.cookie,
  }));
  assert.deepEqual(storage, { session: { 'keygate.adminKey': adminKey }, local: 0, cookie: '' });
  assert.deepEqual(await context.cookies(), []);
  assert.equal(await page.locator('#signin-key').inputValue(), '', 'the sign-in field is cleared');
  await shot('02-signed-in');
});

let key1;

test('generate a key: shown once, copyable, gone after "I have saved my key"', STEP, async () => {
  await page.locator('#new-key').focus();
  await page.keyboard.press('Enter'); // keyboard only
  const dlg = page.locator('#create-dialog');
  await dlg.waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'c-name');
  const checked = await page.$$eval('#c-scopes input', (xs) => Object.fromEntries(xs.map((x) => [x.value, x.checked])));
  assert.deepEqual(checked, {
    models: true, chat: true, completions: true, embeddings: true, responses: true, audio: true, images: true,
    moderations: true, rerank: true, tokenize: true, usage: false, admin: false,
  });
  await page.fill('#c-name', 'browser-test');

  // Mistakes are explained: one caught in the page, one by the API (its message, shown as is).
  const err = page.locator('#create-error');
  await page.$$eval('#c-scopes input', (xs) => xs.forEach((x) => { x.checked = false; }));
  await page.locator('#create-form button[type=submit]').click();
  await err.filter({ hasText: 'Choose at least one scope.' }).waitFor();
  await page.locator('#c-scopes input[value=chat]').check();
  expectedNetworkErrors = [400];
  await page.fill('#c-models', '[llama');
  await page.locator('#create-form button[type=submit]').click();
  await err.filter({ hasText: 'is not a valid glob' }).waitFor();
  expectedNetworkErrors = null;
  await page.$$eval('#c-scopes input', (xs) => xs.forEach((x) => { x.checked = x.defaultChecked; }));

  await page.fill('#c-models', 'llama-*, qwen*');
  await page.selectOption('#c-expiry', '30');
  await page.fill('#c-rpm', '600');
  await page.fill('#c-tpm', '100000');
  await page.fill('#c-inflight', '4');
  await shot('03-generate');
  await page.locator('#create-form button[type=submit]').click();

  key1 = await takeSecret();
  await shot('04-key-shown-once');
  await closeSecret(key1);
  await focusOn('#new-key'); // focus goes back to the opener
  assertNoProblems();
});

test('the generated key works for a chat completion, with its scopes and limits', STEP, async () => {
  const r = await chat(key1);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.object, 'chat.completion');
  const list = await (await fetch(`${addr}/v1/api-keys`, { headers: { Authorization: `Bearer ${adminKey}` } })).json();
  const k = list.data.find((x) => x.name === 'browser-test');
  assert.deepEqual(k.models, ['llama-*', 'qwen*']);
  assert.deepEqual(k.limits, { requests_per_minute: 600, tokens_per_minute: 100000, max_in_flight: 4 });
  assert.ok(!k.scopes.includes('admin') && !k.scopes.includes('usage') && k.scopes.includes('chat'));
  const days = (Date.parse(k.expires_at) - Date.now()) / 86400e3;
  assert.ok(days > 29.9 && days <= 30, `expires in ${days} days`);
});

test('the table shows it with last used updated; search; details with usage', STEP, async () => {
  await page.locator('#reload').click();
  await cell('browser-test', 'Last used').filter({ hasText: 'just now' }).waitFor();
  const masked = `sk_kg_…${key1.slice(-4)}`;
  assert.equal(await cell('browser-test', 'Key').textContent(), masked);
  assert.equal(await cell('browser-test', 'Scopes').textContent(), 'inference');
  assert.equal(await cell('browser-test', 'Status').textContent(), 'active');
  assert.match(await cell('browser-test', 'Expires').textContent(), /\(in 30 days\)/);
  assert.equal(await cell('browser-test', 'Expires').locator('.warn').count(), 0);

  await page.fill('#search', 'BROWSER');
  assert.equal(await page.locator('#keys tbody tr').count(), 1);
  await page.fill('#search', 'nothing-like-this');
  assert.equal(await page.locator('#keys tbody tr').count(), 0);
  assert.match(await page.locator('#keys-status').textContent(), /No key's name contains/);
  await page.fill('#search', '');
  assert.equal(await page.locator('#keys tbody tr').count(), 3);
  await shot('05-keys-table');

  await cell('browser-test', 'Created').click(); // anywhere on the row
  const usage = page.locator('#details-usage');
  await usage.filter({ hasText: 'Prompt tokens' }).waitFor();
  const text = await usage.innerText();
  assert.match(text, /Requests\s+1\b/);
  assert.match(text, /Completion tokens\s+[1-9]/);
  assert.match(text, /Errors\s+0/);
  assert.match(await page.locator('#details-body').innerText(), /llama-\*, qwen\*/);
  await shot('06-details');
  await page.keyboard.press('Escape');
  await page.locator('#details-dialog').waitFor({ state: 'hidden' });
  await focusOn('#keys button.link', 'browser-test'); // focus back on the row
  assertNoProblems();
});

test('a key expiring within 7 days is flagged', STEP, async () => {
  await page.locator('#new-key').click();
  await page.fill('#c-name', 'short-lived');
  await page.selectOption('#c-expiry', 'custom');
  const inThreeDays = new Date(Date.now() + 3 * 86400e3);
  const ymd = `${inThreeDays.getFullYear()}-${String(inThreeDays.getMonth() + 1).padStart(2, '0')}-${String(inThreeDays.getDate()).padStart(2, '0')}`;
  await page.fill('#c-expiry-date', ymd);
  await page.locator('#c-scopes input[value=admin]').check();
  await page.locator('#create-form button[type=submit]').click();
  await page.locator('#secret-dialog').waitFor({ state: 'visible' });
  const key = await page.locator('#secret-key').textContent();
  assert.match(key, /^sk_kg_/);
  await closeSecret(key);
  await cell('short-lived', 'Expires').locator('.warn').waitFor();
  assert.match(await cell('short-lived', 'Expires').textContent(), /\(in 3 days\)$/);
  assert.match(await cell('short-lived', 'Scopes').textContent(), /^inference, admin$/);
});

let key2;

test('rotate: the confirmation says what happens; old key refused, new key works', STEP, async () => {
  await row('browser-test').locator('button.link').click();
  await page.locator('#d-rotate').click();
  const text = page.locator('#confirm-text');
  await page.locator('#confirm-dialog').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Cancel');
  assert.match(await text.textContent(), /stops working immediately/);
  await page.locator('#confirm-grace').getByLabel('After 1 hour').check();
  assert.match(await text.textContent(), /keeps working for 1 hour/);
  await page.locator('#confirm-grace').getByLabel('After 24 hours').check();
  assert.match(await text.textContent(), /keeps working for 24 hours/);
  await page.locator('#confirm-grace').getByLabel('Immediately').check();
  assert.match(await text.textContent(), /stops working immediately/);
  await shot('07-rotate-confirm');
  await page.locator('#confirm-ok').click();

  key2 = await takeSecret();
  assert.notEqual(key2, key1);
  await closeSecret(key2);
  await focusOn('#keys button.link', 'browser-test'); // focus back on the row

  const old = await chat(key1);
  assert.equal(old.status, 401, JSON.stringify(old.body));
  const fresh = await chat(key2);
  assert.equal(fresh.status, 200, JSON.stringify(fresh.body));
  await cell('browser-test', 'Key').filter({ hasText: key2.slice(-4) }).waitFor();
  assertNoProblems();
});

test('revoke: the confirmation says what happens; the key is refused', STEP, async () => {
  await row('browser-test').locator('button.link').click();
  await page.locator('#d-revoke').click();
  await page.locator('#confirm-dialog').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#confirm-grace').isVisible(), false);
  assert.match(await page.locator('#confirm-text').textContent(), /stops working immediately and for good/);
  await shot('08-revoke-confirm');
  await page.locator('#confirm-ok').click();
  await cell('browser-test', 'Status').filter({ hasText: 'revoked' }).waitFor();
  assert.match(await page.locator('#keys-status').textContent(), /revoked/);
  const r = await chat(key2);
  assert.equal(r.status, 401);
  assert.equal(r.body.error.code, 'revoked_api_key');
  assertNoProblems();

  // The overview used in the README: active, expiring-soon and revoked keys side by side.
  await page.evaluate(() => document.activeElement.blur());
  await page.setViewportSize({ width: 1100, height: 440 });
  const file = await shot('11-overview');
  if (process.env.KEYGATE_UPDATE_DOCS_SCREENSHOT) copyFileSync(file, path.join(ROOT, 'docs/console.png'));
  await page.setViewportSize({ width: 1200, height: 860 });
});

test('works at 360 px wide', STEP, async () => {
  await page.setViewportSize({ width: 360, height: 800 });
  await page.locator('#reload').click();
  await row('browser-test').waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(overflow <= 360, `page is ${overflow} px wide`);
  await shot('09-mobile-360', { fullPage: true });
  await page.locator('#new-key').click();
  const box = await page.locator('#create-dialog').boundingBox();
  assert.ok(box.x >= 0 && box.x + box.width <= 360, JSON.stringify(box));
  await shot('10-mobile-360-generate');
  await page.locator('#create-dialog [data-close]').click();
  await page.setViewportSize({ width: 1200, height: 860 });
});

test('sign out forgets the key', STEP, async () => {
  await page.locator('#signout').click();
  await page.locator('#signin-view').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
  assert.equal(await page.locator('#keys tbody tr').count(), 0);
  await page.reload();
  await page.locator('#signin-view').waitFor({ state: 'visible' });
});

test('no console errors, page errors or CSP violations', async () => {
  assertNoProblems();
});
