// keygate console: plain JS, no framework, no build step. Every action is a call to the
// management API (reference: Management API) with the admin key the user signed in with, which lives in this
// tab's sessionStorage only. A new key's plaintext lives in the "save your key" dialog's DOM
// while it is open and nowhere else; closing the dialog removes it.
'use strict';

const STORE = 'keygate.adminKey';
const SCOPES = [
  ['models', 'list and read models', true],
  ['chat', 'chat completions', true],
  ['completions', 'text completions', true],
  ['embeddings', 'text embeddings', true],
  ['responses', 'the Responses API', true],
  ['audio', 'speech and transcription', true],
  ['images', 'image generation', true],
  ['moderations', 'content moderation', true],
  ['rerank', 'rerank and score', true],
  ['tokenize', 'tokenize and detokenize', true],
  ['usage', 'read usage analytics', false],
  ['admin', 'manage API keys (create, rotate, revoke)', false],
];
const INFERENCE = SCOPES.filter((s) => s[2]).map((s) => s[0]);
const DAY = 86400e3;

const $ = (id) => document.getElementById(id);
let keys = [];

// ---- small helpers ----------------------------------------------------------------------

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...kids.flat().filter((c) => c != null && c !== false));
  return el;
}

function show(el, text) {
  el.textContent = text || '';
  el.hidden = !text;
}

// `sk_kg_…abcd`, the form the API lists keys in.
function mask(key) {
  return key.slice(0, key.lastIndexOf('_') + 1) + '…' + key.slice(-4);
}

function date(iso) {
  return iso ? new Date(iso).toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' }) : '—';
}

function stamp(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

// "3 min ago", "just now", "in 5 days" (calendar days, so a key expiring at the end of the
// day after tomorrow is "in 2 days" whatever the time now).
function relative(iso) {
  const t = Date.parse(iso);
  const s = Math.round((Date.now() - t) / 1000);
  const a = Math.abs(s);
  if (a < 60) return s > -10 ? 'just now' : 'in under a minute';
  if (a < 86400) {
    const [n, unit] = a < 3600 ? [Math.floor(a / 60), 'min'] : [Math.floor(a / 3600), 'h'];
    return s > 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
  }
  const n = s > 0 ? Math.floor(a / 86400) : Math.round((new Date(t).setHours(0, 0, 0, 0) - new Date().setHours(0, 0, 0, 0)) / DAY);
  const days = n === 1 ? '1 day' : `${n} days`;
  return s > 0 ? `${days} ago` : `in ${days}`;
}

function scopeText(scopes) {
  const rest = scopes.filter((s) => !INFERENCE.includes(s));
  const all = INFERENCE.every((s) => scopes.includes(s));
  return (all ? ['inference', ...rest] : scopes).join(', ') || '—';
}

// ---- the management API -----------------------------------------------------------------

async function api(method, path, body, key = sessionStorage.getItem(STORE)) {
  const init = { method, cache: 'no-store', headers: { Authorization: `Bearer ${key}` } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw Object.assign(new Error('Could not reach the gateway. Check that it is running, then try again.'), { status: 0 });
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const msg = data && data.error && data.error.message;
    const err = new Error(msg || `The gateway answered ${res.status} ${res.statusText}.`);
    throw Object.assign(err, { status: res.status, code: data && data.error && data.error.code });
  }
  return data;
}

// The key list pages (100 keys a page, newest first): the console reads up to CONSOLE_KEYS of
// them, revoked ones included, and says when there are more.
const CONSOLE_KEYS = 1000;
let truncated = false;
async function listKeys(key) {
  const out = [];
  let after = '';
  for (;;) {
    const page = await api('GET', `/v1/api-keys?limit=100&status=all${after}`, undefined, key);
    out.push(...page.data);
    truncated = page.has_more && out.length >= CONSOLE_KEYS;
    if (!page.has_more || truncated) return out;
    after = `&after=${encodeURIComponent(page.last_id)}`;
  }
}

// A refused admin key (revoked, rotated away, scope removed) ends the session.
function failed(err, el) {
  if (err.status === 401) {
    signOut(`Signed out: the gateway no longer accepts your admin key. ${err.message}`);
    return;
  }
  show(el, err.message);
}

// ---- dialogs ----------------------------------------------------------------------------

// Opens `dlg` as a modal; when it closes, focus goes back to `back` (an element or a function
// giving one, since the table may have been redrawn meanwhile) unless another dialog is on top.
function openDialog(dlg, back, first) {
  dlg.back = back || document.activeElement;
  dlg.showModal();
  dlg.scrollTop = 0;
  (first || dlg.querySelector('[autofocus], input:not([type=hidden]):not([hidden]), select, button')).focus();
}

function onDialogClosed(e) {
  const dlg = e.target;
  if (dlg.id === 'secret-dialog' && $('secret-key').textContent) return dlg.showModal(); // not saved yet
  let t = typeof dlg.back === 'function' ? dlg.back() : dlg.back;
  dlg.back = null;
  const open = document.querySelector('dialog[open]');
  if (open && !(t && open.contains(t))) return;
  if (!t || !t.isConnected || (t.closest('dialog') && !t.closest('dialog[open]'))) t = $('new-key').offsetParent ? $('new-key') : $('signin-key');
  t.focus();
}

for (const dlg of document.querySelectorAll('dialog')) {
  dlg.addEventListener('close', onDialogClosed);
  for (const b of dlg.querySelectorAll('[data-close]')) b.addEventListener('click', () => dlg.close());
}

// ---- sign in / out ----------------------------------------------------------------------

async function signIn(e) {
  e.preventDefault();
  const input = $('signin-key');
  const key = input.value.trim();
  const err = $('signin-error');
  if (!/^[\x21-\x7e]+$/.test(key)) return show(err, 'That does not look like an API key: paste the whole key, it starts with its prefix (sk_…).');
  show(err, '');
  const btn = e.submitter || input.form.querySelector('[type=submit]');
  btn.disabled = true;
  try {
    const list = await listKeys(key);
    sessionStorage.setItem(STORE, key);
    input.value = '';
    enter(list);
  } catch (x) {
    show(err, x.status ? `Sign-in refused: ${x.message}` : x.message);
    input.focus();
  } finally {
    btn.disabled = false;
  }
}

function enter(list) {
  $('signin-view').hidden = true;
  $('keys-view').hidden = false;
  $('who').hidden = false;
  $('who-key').textContent = `Signed in with ${mask(sessionStorage.getItem(STORE))}`;
  if (list) {
    keys = list;
    render();
  } else {
    load();
  }
  $('new-key').focus();
}

function signOut(message) {
  sessionStorage.removeItem(STORE);
  for (const d of document.querySelectorAll('dialog[open]')) {
    if (d.id === 'secret-dialog') continue; // a new key is never thrown away unseen
    d.close();
  }
  keys = [];
  $('keys').tBodies[0].replaceChildren();
  $('search').value = '';
  show($('keys-status'), '');
  $('keys-view').hidden = true;
  $('who').hidden = true;
  $('signin-view').hidden = false;
  show($('signin-error'), typeof message === 'string' ? message : '');
  if (!document.querySelector('dialog[open]')) $('signin-key').focus();
}

$('signin-form').addEventListener('submit', signIn);
$('signout').addEventListener('click', () => signOut());

// ---- the keys table ---------------------------------------------------------------------

async function load() {
  show($('keys-status'), 'Loading…');
  try {
    keys = await listKeys();
    show($('keys-error'), '');
    render();
  } catch (err) {
    show($('keys-status'), '');
    failed(err, $('keys-error'));
  }
}

function render() {
  const q = $('search').value.trim().toLowerCase();
  const me = sessionStorage.getItem(STORE) && mask(sessionStorage.getItem(STORE));
  const shown = keys
    .filter((k) => !q || k.name.toLowerCase().includes(q))
    .sort((a, b) => (a.status === 'revoked') - (b.status === 'revoked') || b.created_at.localeCompare(a.created_at));
  const cell = (label, ...kids) => h('td', { 'data-label': label }, ...kids);
  const rows = shown.map((k) => {
    const soon = k.status === 'active' && k.expires_at && Date.parse(k.expires_at) - Date.now() < 7 * DAY;
    return h('tr', { 'data-id': k.id, class: k.status === 'active' ? null : 'inactive', onclick: (e) => e.target.closest('button') || details(k.id) },
      cell('Name', h('button', { type: 'button', class: 'link', 'data-id': k.id, onclick: () => details(k.id) }, k.name),
        k.masked_key === me ? h('span', { class: 'muted' }, ' (you)') : null),
      cell('Key', h('code', null, k.masked_key)),
      cell('Scopes', scopeText(k.scopes)),
      cell('Created', h('time', { datetime: k.created_at, title: stamp(k.created_at) }, date(k.created_at))),
      cell('Last used', k.last_used_at ? h('time', { datetime: k.last_used_at, title: stamp(k.last_used_at) }, relative(k.last_used_at)) : 'never'),
      cell('Expires', k.expires_at
        ? h('time', { datetime: k.expires_at, title: stamp(k.expires_at), class: soon ? 'warn' : null },
          `${date(k.expires_at)} (${relative(k.expires_at)})`)
        : 'never'),
      cell('Status', h('span', { class: `badge ${k.status}` }, k.status)));
  });
  const focused = document.activeElement && document.activeElement.closest('#keys button');
  $('keys').tBodies[0].replaceChildren(...rows);
  if (focused && rowButton(focused.dataset.id)) rowButton(focused.dataset.id).focus();
  const active = keys.filter((k) => k.status === 'active').length;
  show($('keys-status'), !keys.length ? 'No keys yet.' : !shown.length ? `No key's name contains “${q}”.`
    : `${shown.length} of ${keys.length}${truncated ? ' newest' : ''} keys shown, ${active} active. Updated ${new Date().toLocaleTimeString()}.`);
}

function rowButton(id) {
  return document.querySelector(`#keys button[data-id="${CSS.escape(id)}"]`);
}

$('search').addEventListener('input', render);
$('reload').addEventListener('click', load);

// ---- generate a key ---------------------------------------------------------------------

$('c-scopes').append(...SCOPES.map(([name, text, on]) =>
  h('label', { class: 'choice' }, h('input', { type: 'checkbox', name: 'scope', value: name, checked: on }),
    h('code', null, name), ` ${text}`)));

$('c-expiry').addEventListener('change', () => {
  const custom = $('c-expiry').value === 'custom';
  $('c-expiry-date').hidden = $('c-expiry-date-label').hidden = !custom;
  $('c-expiry-date').required = custom;
  $('c-expiry-date').min = new Date(Date.now() + DAY).toISOString().slice(0, 10);
});

$('new-key').addEventListener('click', () => {
  $('create-form').reset();
  $('c-expiry').dispatchEvent(new Event('change'));
  show($('create-error'), '');
  openDialog($('create-dialog'), $('new-key'));
});

function createBody() {
  const body = { name: $('c-name').value.trim() };
  if (!body.name) throw new Error('Give the key a name.');
  body.scopes = [...document.querySelectorAll('#c-scopes input:checked')].map((c) => c.value);
  if (!body.scopes.length) throw new Error('Choose at least one scope.');
  const models = $('c-models').value.split(',').map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  const exp = $('c-expiry').value;
  if (exp === 'custom') {
    const d = new Date(`${$('c-expiry-date').value}T23:59:59`);
    if (isNaN(d) || d <= Date.now()) throw new Error('Choose an expiry date in the future.');
    body.expires_at = d.toISOString().replace(/\.\d+Z$/, 'Z');
  } else if (exp) {
    body.expires_in_days = Number(exp);
  }
  const limits = {};
  for (const [id, field] of [['c-rpm', 'requests_per_minute'], ['c-tpm', 'tokens_per_minute'], ['c-inflight', 'max_in_flight']]) {
    const v = $(id).value.trim();
    if (!v) continue;
    if (!/^\d+$/.test(v) || Number(v) < 1) throw new Error(`${$(id).labels[0].textContent} must be a whole number of at least 1.`);
    limits[field] = Number(v);
  }
  if (Object.keys(limits).length) body.limits = limits;
  return body;
}

$('create-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const err = $('create-error');
  const btn = e.submitter || $('create-form').querySelector('[type=submit]');
  let body;
  try {
    body = createBody();
  } catch (x) {
    return show(err, x.message);
  }
  show(err, '');
  btn.disabled = true;
  try {
    const created = await api('POST', '/v1/api-keys', body);
    $('create-dialog').close();
    showSecret(created, `Key “${created.name}” created`, $('new-key'));
    load();
  } catch (x) {
    failed(x, err);
  } finally {
    btn.disabled = false;
  }
});

// ---- the key, shown once ----------------------------------------------------------------

// Puts the plaintext into the dialog (its only copy in the page) and drops it from `res`.
function showSecret(res, title, back) {
  $('secret-title').textContent = title;
  $('secret-key').textContent = res.key;
  $('secret-snippet').textContent = `from openai import OpenAI

client = OpenAI(
    base_url="${location.origin}/v1",
    api_key="${res.key}",
)`;
  delete res.key;
  show($('copy-status'), '');
  openDialog($('secret-dialog'), back, $('copy'));
}

const secret = $('secret-dialog');
secret.addEventListener('cancel', (e) => e.preventDefault());
secret.addEventListener('keydown', (e) => { if (e.key === 'Escape') e.preventDefault(); });

$('saved').addEventListener('click', () => {
  $('secret-key').textContent = '';
  $('secret-snippet').textContent = '';
  show($('copy-status'), '');
  window.getSelection().removeAllRanges();
  secret.close();
});

$('copy').addEventListener('click', async () => {
  const el = $('secret-key');
  const status = $('copy-status');
  try {
    await navigator.clipboard.writeText(el.textContent);
    return show(status, 'Copied to the clipboard.');
  } catch {
    // No clipboard API (plain http on another host) or no permission: copy the selection.
  }
  const range = document.createRange();
  range.selectNodeContents(el);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  if (ok) sel.removeAllRanges();
  show(status, ok ? 'Copied to the clipboard.' : 'The key is selected: press Ctrl+C (⌘C on a Mac) to copy it.');
});

// ---- details, rotate, revoke ------------------------------------------------------------

let current = null; // the key whose details are open

async function details(id) {
  const k = keys.find((x) => x.id === id);
  if (!k) return;
  current = k;
  $('details-title').textContent = k.name;
  fillDetails(k, null);
  show($('details-error'), '');
  const open = k.status !== 'revoked';
  $('d-rotate').hidden = $('d-revoke').hidden = !open;
  openDialog($('details-dialog'), () => rowButton(id), $('details-dialog').querySelector('[data-close]'));
  try {
    const full = await api('GET', `/v1/api-keys/${encodeURIComponent(id)}`);
    if (current && current.id === id) fillDetails(full, full.usage || {});
  } catch (err) {
    failed(err, $('details-error'));
  }
}

function fillDetails(k, u) {
  const pair = (name, value) => [h('dt', null, name), h('dd', null, value)];
  const lim = k.limits || {};
  const limits = [['requests_per_minute', 'requests/min'], ['tokens_per_minute', 'tokens/min'], ['max_in_flight', 'in flight'], ['burst', 'burst']]
    .filter(([f]) => lim[f]).map(([f, t]) => `${lim[f].toLocaleString()} ${t}`).join(', ');
  $('details-body').replaceChildren(
    ...pair('Id', h('code', null, k.id)),
    ...pair('Key', h('code', null, k.masked_key)),
    ...pair('Status', h('span', { class: `badge ${k.status}` }, k.status)),
    ...pair('Scopes', k.scopes.join(', ') || '—'),
    ...pair('Models', (k.models || []).join(', ') || 'all models'),
    ...pair('Limits', limits || 'gateway defaults'),
    ...pair('Created', stamp(k.created_at)),
    ...pair('Last used', k.last_used_at ? `${stamp(k.last_used_at)} (${relative(k.last_used_at)})` : 'never'),
    ...pair('Expires', k.expires_at ? `${stamp(k.expires_at)} (${relative(k.expires_at)})` : 'never'),
    ...(k.rotated_at ? pair('Rotated', stamp(k.rotated_at)) : []),
    ...(k.revoked_at ? pair('Revoked', stamp(k.revoked_at)) : []),
    ...(k.previous_keys_valid || []).flatMap((p) => pair('Old key', `${p.masked_key} works until ${stamp(p.valid_until)}`)));
  $('details-usage').replaceChildren(...(u
    ? [...pair('Requests', (u.requests || 0).toLocaleString()),
      ...pair('Prompt tokens', (u.prompt_tokens || 0).toLocaleString()),
      ...pair('Completion tokens', (u.completion_tokens || 0).toLocaleString()),
      ...pair('Errors', `${((u.client_errors || 0) + (u.upstream_errors || 0)).toLocaleString()} (${u.client_errors || 0} client, ${u.upstream_errors || 0} upstream)`),
      ...pair('Rate limited', (u.rate_limited || 0).toLocaleString())]
    : pair('Loading', '…')));
}

const GRACE = { 0: null, 3600: '1 hour', 86400: '24 hours' };

function confirmText() {
  const k = current;
  const mine = k.masked_key === mask(sessionStorage.getItem(STORE) || '');
  if (confirmKind === 'revoke') {
    return `“${k.name}” (${k.masked_key}) stops working immediately and for good, together with any old key still in a ` +
      'rotation grace period. Anything using it gets 401 errors. This cannot be undone.' +
      (mine ? ' You are signed in with this key: you will lose access to this console.' : '');
  }
  const grace = GRACE[document.querySelector('#confirm-grace input:checked').value];
  return (grace
    ? `The current key (${k.masked_key}) keeps working for ${grace}, then stops. Switch your apps to the new key before then.`
    : `The current key (${k.masked_key}) stops working immediately. Anything still using it gets 401 errors until it uses the new key.`) +
    ' The key keeps its id, name, scopes, limits and usage history; the new key is shown once.' +
    (mine ? ' You are signed in with this key: sign in again with the new one once the current one stops.' : '');
}

let confirmKind = null;

function askConfirm(kind) {
  confirmKind = kind;
  const rotate = kind === 'rotate';
  $('confirm-title').textContent = rotate ? `Rotate “${current.name}”?` : `Revoke “${current.name}”?`;
  $('confirm-ok').textContent = rotate ? 'Rotate key' : 'Revoke key';
  $('confirm-grace').hidden = !rotate;
  document.querySelector('#confirm-grace input[value="0"]').checked = true;
  $('confirm-text').textContent = confirmText();
  show($('confirm-error'), '');
  openDialog($('confirm-dialog'), $(rotate ? 'd-rotate' : 'd-revoke'), $('confirm-dialog').querySelector('[data-close]'));
}

$('d-rotate').addEventListener('click', () => askConfirm('rotate'));
$('d-revoke').addEventListener('click', () => askConfirm('revoke'));
$('confirm-grace').addEventListener('change', () => { $('confirm-text').textContent = confirmText(); });

$('confirm-ok').addEventListener('click', async () => {
  const k = current;
  const btn = $('confirm-ok');
  btn.disabled = true;
  try {
    let rotated = null;
    if (confirmKind === 'rotate') {
      const grace = Number(document.querySelector('#confirm-grace input:checked').value);
      rotated = await api('POST', `/v1/api-keys/${encodeURIComponent(k.id)}/rotate`, { grace_seconds: grace });
    } else {
      await api('DELETE', `/v1/api-keys/${encodeURIComponent(k.id)}`);
    }
    $('confirm-dialog').close();
    $('details-dialog').close();
    current = null;
    if (rotated) showSecret(rotated, `Key “${rotated.name}” rotated`, () => rowButton(k.id));
    await load();
    if (!rotated) {
      show($('keys-status'), `Key “${k.name}” revoked. ${$('keys-status').textContent}`);
    }
  } catch (err) {
    failed(err, $('confirm-error'));
  } finally {
    btn.disabled = false;
  }
});

// ---- start ------------------------------------------------------------------------------

if (sessionStorage.getItem(STORE)) enter(null);
else signOut();
