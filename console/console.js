// keygate console: plain JS, no framework, no build step (chart.js, console.js, edit.js,
// usage.js, loaded in that order; they share the page's global scope). Every action is a call to the
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

// Text a client chose (a model name in usage) as the page shows it: control characters,
// format characters (Cf: zero width, bidi, soft hyphen, tags, …) and the line and paragraph
// separators as \u{…} escapes, as the CLI prints them, so it cannot reorder or hide the text
// around it.
function visible(s) {
  return String(s).replace(/[\p{Cc}\p{Cf}\u2028\u2029]/gu,
    (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
}

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
    const e = (data && data.error) || {};
    throw Object.assign(err, { status: res.status, code: e.code, param: e.param });
  }
  return data;
}

// ---- read-only key store -----------------------------------------------------------------

// Set from the list's `key_store` (or a write's 409 `read_only_key_store`): the page says so
// once and offers no write, instead of failing each one.
let readOnly = null;
const WRITES = ['new-key', 'd-edit', 'd-toggle', 'd-rotate', 'd-revoke'];

function setReadOnly(reason) {
  readOnly = reason || null;
  show($('readonly'), readOnly
    ? `The key store is read-only (${readOnly}): keys can be looked at here, not created, edited, disabled, rotated or revoked. Manage keys where the key file is writable.`
    : '');
  for (const id of WRITES) {
    $(id).disabled = !!readOnly;
    $(id).title = readOnly ? 'The key store is read-only' : '';
  }
  for (const sw of document.querySelectorAll('#keys .switch')) sw.disabled = !!readOnly;
}

// A refused admin key (revoked, rotated away, scope removed) ends the session.
function failed(err, el) {
  if (err.status === 401) {
    signOut(`Signed out: the gateway no longer accepts your admin key. ${err.message}`);
    return;
  }
  if (err.code === 'read_only_key_store') setReadOnly(readOnly || 'a write was refused');
  show(el, err.message);
}

// ---- dialogs ----------------------------------------------------------------------------

// Opens `dlg` as a modal; when it closes, focus goes back to `back` (an element or a function
// giving one, since the table may have been redrawn meanwhile) unless another dialog is on top.
function openDialog(dlg, back, first) {
  dlg.back = back || document.activeElement;
  dlg.showModal();
  dlg.scrollTop = 0;
  (first || dlg.querySelector('[autofocus], input:not([type=hidden]):not([hidden]), textarea, select, button')).focus();
}

function fallbackFocus() {
  if (!$('keys-view').hidden) return $('new-key').disabled ? $('search') : $('new-key');
  if (!$('usage-view').hidden) return $('u-range');
  return $('signin-key');
}

function onDialogClosed(e) {
  const dlg = e.target;
  if (dlg.id === 'secret-dialog' && $('secret-key').textContent) return dlg.showModal(); // not saved yet
  let t = typeof dlg.back === 'function' ? dlg.back() : dlg.back;
  dlg.back = null;
  const open = document.querySelector('dialog[open]');
  if (open && !(t && open.contains(t))) return;
  if (!t || !t.isConnected || t.disabled || (t.closest('dialog') && !t.closest('dialog[open]'))) t = fallbackFocus();
  t.focus();
}

for (const dlg of document.querySelectorAll('dialog')) {
  dlg.addEventListener('close', onDialogClosed);
  for (const b of dlg.querySelectorAll('[data-close]')) b.addEventListener('click', () => dlg.close());
}

// ---- sign in / out, pages ---------------------------------------------------------------

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
    const page = await api('GET', `/v1/api-keys?${listQuery()}`, undefined, key);
    sessionStorage.setItem(STORE, key);
    input.value = '';
    enter(page);
  } catch (x) {
    show(err, x.status ? `Sign-in refused: ${x.message}` : x.message);
    input.focus();
  } finally {
    btn.disabled = false;
  }
}

function enter(page) {
  $('signin-view').hidden = true;
  $('who').hidden = false;
  $('nav').hidden = false;
  $('who-key').textContent = `Signed in with ${mask(sessionStorage.getItem(STORE))}`;
  if (page) received(page);
  route(!page);
}

// The page in the URL's fragment: #keys (the default) or #usage.
function route(reload = true) {
  if (!sessionStorage.getItem(STORE)) return;
  const usage = location.hash === '#usage';
  $('keys-view').hidden = usage;
  $('usage-view').hidden = !usage;
  for (const [id, on] of [['nav-keys', !usage], ['nav-usage', usage]]) {
    if (on) $(id).setAttribute('aria-current', 'page');
    else $(id).removeAttribute('aria-current');
  }
  if (usage) {
    loadUsage();
  } else {
    if (reload) load();
    fallbackFocus().focus();
  }
}

window.addEventListener('hashchange', () => route());

function signOut(message) {
  sessionStorage.removeItem(STORE);
  for (const d of document.querySelectorAll('dialog[open]')) {
    if (d.id === 'secret-dialog') continue; // a new key is never thrown away unseen
    d.close();
  }
  keys = [];
  $('keys').tBodies[0].replaceChildren();
  $('filters').reset();
  view.after = '';
  view.stack = [];
  show($('keys-status'), '');
  show($('keys-error'), '');
  fieldError($('f-meta'), '');
  resetUsage();
  $('keys-view').hidden = true;
  $('usage-view').hidden = true;
  $('who').hidden = true;
  $('nav').hidden = true;
  $('signin-view').hidden = false;
  show($('signin-error'), typeof message === 'string' ? message : '');
  if (!document.querySelector('dialog[open]')) $('signin-key').focus();
}

$('signin-form').addEventListener('submit', signIn);
$('signout').addEventListener('click', () => signOut());

// ---- the keys table: one page of the server's list ---------------------------------------

// `after` is the cursor of the page shown; `stack` the cursors of the pages before it
// (Previous pops one). Any change of filter or sort starts again at the first page.
const view = { after: '', stack: [], page: null };
let typing = null; // the search waits for a pause in typing
let loads = 0; // answers to an older request than the last are dropped

function listQuery() {
  const p = new URLSearchParams();
  p.set('limit', $('f-limit').value);
  const [sort, order] = $('f-sort').value.split(':');
  p.set('sort', sort);
  p.set('order', order);
  if ($('f-status').value) p.set('status', $('f-status').value);
  const name = $('search').value.trim();
  if (name) p.set('name_prefix', name);
  const meta = $('f-meta').value.trim();
  if (meta) p.append('meta', meta);
  if (view.after) p.set('after', view.after);
  return p;
}

async function load() {
  const n = ++loads;
  const meta = $('f-meta').value.trim();
  if (meta && !/^[^:]+:/.test(meta)) {
    return fieldError($('f-meta'), 'Write a label as name:value, e.g. team:search.');
  }
  fieldError($('f-meta'), '');
  if (!keys.length) show($('keys-status'), 'Loading…');
  try {
    const page = await api('GET', `/v1/api-keys?${listQuery()}`);
    if (n !== loads) return;
    received(page);
  } catch (err) {
    if (n !== loads) return;
    if (err.param === 'meta') return fieldError($('f-meta'), err.message);
    if (err.param === 'after' && view.after) { // the page's first key is gone: start again
      view.after = '';
      view.stack = [];
      return load();
    }
    show($('keys-status'), '');
    failed(err, $('keys-error'));
  }
}

function received(page) {
  keys = page.data;
  view.page = page;
  setReadOnly(page.key_store && page.key_store.writable === false ? page.key_store.reason || 'not writable' : null);
  show($('keys-error'), '');
  render();
  trends(keys);
}

function restart() {
  clearTimeout(typing); // a search still waiting is part of this load
  view.after = '';
  view.stack = [];
  load();
}

$('search').addEventListener('input', () => {
  clearTimeout(typing);
  typing = setTimeout(restart, 250);
});
$('filters').addEventListener('submit', (e) => { e.preventDefault(); restart(); });
$('f-meta').addEventListener('change', restart);
for (const id of ['f-status', 'f-sort', 'f-limit']) $(id).addEventListener('change', restart);
$('reload').addEventListener('click', load);
$('next').addEventListener('click', () => {
  if (!view.page || !view.page.has_more) return;
  view.stack.push(view.after);
  view.after = view.page.last_id;
  load();
});
$('prev').addEventListener('click', () => {
  if (!view.stack.length) return;
  view.after = view.stack.pop();
  load();
});

function filtersText() {
  const parts = [];
  const name = $('search').value.trim();
  if (name) parts.push(`name starts with “${name}”`);
  const meta = $('f-meta').value.trim();
  if (meta) parts.push(`label ${meta}`);
  if ($('f-status').value !== 'all') parts.push(`status: ${$('f-status').selectedOptions[0].textContent.toLowerCase()}`);
  return parts.join(', ');
}

function render() {
  const me = sessionStorage.getItem(STORE) && mask(sessionStorage.getItem(STORE));
  const cell = (label, ...kids) => h('td', { 'data-label': label }, ...kids);
  const rows = keys.map((k) => {
    const soon = k.status === 'active' && k.expires_at && Date.parse(k.expires_at) - Date.now() < 7 * DAY;
    const labels = Object.entries(k.metadata || {}).map(([n, v]) => h('span', { class: 'chip' }, `${n}=${v}`));
    return h('tr', { 'data-id': k.id, class: k.status === 'active' ? null : 'inactive', onclick: (e) => e.target.closest('button') || details(k.id) },
      cell('Name', h('button', { type: 'button', class: 'link', 'data-id': k.id, onclick: () => details(k.id) }, k.name),
        k.masked_key === me ? h('span', { class: 'muted' }, ' (you)') : null),
      cell('Description', k.description ? h('span', { class: 'desc', title: k.description }, k.description) : null,
        labels.length ? h('span', { class: 'chips' }, labels) : null, !k.description && !labels.length ? '—' : null),
      cell('Key', h('code', null, k.masked_key)),
      cell('Scopes', scopeText(k.scopes)),
      cell('Models', (k.models || []).length ? k.models.join(', ') : h('span', { class: 'muted' }, 'all')),
      cell('Created', h('time', { datetime: k.created_at, title: stamp(k.created_at) }, date(k.created_at))),
      cell('Last used', k.last_used_at ? h('time', { datetime: k.last_used_at, title: stamp(k.last_used_at) }, relative(k.last_used_at)) : 'never'),
      cell('Expires', !k.expires_at ? 'never'
        : k.status === 'revoked' // no countdown on a key that is gone for good
          ? h('time', { datetime: k.expires_at, title: stamp(k.expires_at), class: 'muted' }, date(k.expires_at))
          : h('time', { datetime: k.expires_at, title: stamp(k.expires_at), class: soon ? 'warn' : null },
            `${date(k.expires_at)} (${relative(k.expires_at)})`)),
      h('td', { 'data-label': 'Last 7 days', class: 'trend', 'data-trend': k.id }, h('span', { class: 'muted' }, '…')),
      cell('Status', h('span', { class: `badge ${k.status}` }, k.status),
        k.status === 'revoked' ? null : h('button', {
          type: 'button', role: 'switch', class: 'switch', 'data-toggle': k.id, 'aria-checked': String(k.status !== 'disabled'),
          'aria-label': `${k.name} enabled`, title: k.status === 'disabled' ? 'Enable this key' : 'Disable this key',
          disabled: !!readOnly, onclick: () => toggle(k),
        })));
  });
  const focused = document.activeElement && document.activeElement.closest('#keys button');
  $('keys').tBodies[0].replaceChildren(...rows);
  if (focused) {
    const again = focused.dataset.toggle ? switchButton(focused.dataset.toggle) : rowButton(focused.dataset.id);
    if (again) again.focus();
  }
  const page = view.page || { has_more: false };
  const first = view.stack.length * Number($('f-limit').value) + 1;
  $('prev').disabled = !view.stack.length;
  $('next').disabled = !page.has_more;
  $('page-info').textContent = keys.length ? `Keys ${first}–${first + keys.length - 1}${page.has_more ? ', more on the next page' : ''}` : '';
  const filters = filtersText();
  show($('keys-status'), keys.length ? `Updated ${new Date().toLocaleTimeString()}.`
    : view.stack.length ? 'No more keys.'
      : $('search').value.trim() && filters === `name starts with “${$('search').value.trim()}”` ? `No key's name starts with “${$('search').value.trim()}”.`
        : filters ? `No key matches: ${filters}.` : 'No keys yet.');
}

function rowButton(id) {
  return document.querySelector(`#keys button.link[data-id="${CSS.escape(id)}"]`);
}

function switchButton(id) {
  return document.querySelector(`#keys button[data-toggle="${CSS.escape(id)}"]`);
}

// ---- disable / enable -------------------------------------------------------------------

function mine(k) {
  return k.masked_key === mask(sessionStorage.getItem(STORE) || '');
}

// The switch in the table and the button in the details: disabling your own key asks first.
function toggle(k) {
  current = k;
  if (k.status !== 'disabled' && mine(k)) return askConfirm('disable');
  setEnabled(k, k.status === 'disabled');
}

async function setEnabled(k, on) {
  try {
    const after = await api('POST', `/v1/api-keys/${encodeURIComponent(k.id)}/${on ? 'enable' : 'disable'}`);
    if (current && current.id === k.id && $('details-dialog').open) refreshDetails(k.id, after);
    await load();
    show($('keys-status'), `Key “${k.name}” ${on ? 'enabled' : 'disabled'}. ${$('keys-status').textContent}`);
    return true;
  } catch (err) {
    failed(err, $('details-dialog').open ? $('details-error') : $('keys-error'));
    return false;
  }
}

// ---- the key, shown once ----------------------------------------------------------------

// The snippets for the key in the dialog, made from its text when a tab is chosen (so the
// plaintext is in no variable of the page).
const SNIPPETS = {
  python: (base, key) => `from openai import OpenAI

client = OpenAI(
    base_url="${base}",
    api_key="${key}",
)`,
  node: (base, key) => `import OpenAI from "openai";

const client = new OpenAI({
  baseURL: "${base}",
  apiKey: "${key}",
});`,
  curl: (base, key) => `curl ${base}/models \\
  -H "Authorization: Bearer ${key}"`,
  env: (base, key) => `# read by the OpenAI SDKs (Python, Node) and many tools
export OPENAI_BASE_URL="${base}"
export OPENAI_API_KEY="${key}"`,
};
let snippetLang = 'python';

function showSnippet(lang) {
  snippetLang = lang;
  for (const tab of document.querySelectorAll('#snippet-tabs [role=tab]')) {
    const on = tab.dataset.lang === lang;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on) $('secret-snippet').setAttribute('aria-labelledby', tab.id);
  }
  const key = $('secret-key').textContent;
  $('secret-snippet').textContent = key ? SNIPPETS[lang](`${location.origin}/v1`, key) : '';
}

$('snippet-tabs').addEventListener('click', (e) => {
  const tab = e.target.closest('[role=tab]');
  if (tab) showSnippet(tab.dataset.lang);
});
$('snippet-tabs').addEventListener('keydown', (e) => {
  const tabs = [...document.querySelectorAll('#snippet-tabs [role=tab]')];
  const i = tabs.indexOf(document.activeElement);
  const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
  if (i < 0 || !step) return;
  e.preventDefault();
  const next = tabs[(i + step + tabs.length) % tabs.length];
  showSnippet(next.dataset.lang);
  next.focus();
});

// Puts the plaintext into the dialog (its only copy in the page) and drops it from `res`.
function showSecret(res, title, back) {
  $('secret-title').textContent = title;
  $('secret-key').textContent = res.key;
  delete res.key;
  showSnippet('python');
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
  current = k || { id, name: id, status: 'active' };
  $('details-title').textContent = current.name;
  if (k) fillDetails(k, null);
  else $('details-body').replaceChildren();
  show($('details-error'), '');
  buttonsFor(current);
  const dlg = $('details-dialog');
  if (!dlg.open) openDialog(dlg, () => rowButton(id) || document.querySelector(`#top-keys button[data-id="${CSS.escape(id)}"]`), dlg.querySelector('[data-close]'));
  await refreshDetails(id);
}

// Reads the key again (with its usage and quota) into the open details.
async function refreshDetails(id, known) {
  if (known && current && current.id === id) {
    current = known;
    fillDetails(known, null);
    buttonsFor(known);
  }
  try {
    const full = await api('GET', `/v1/api-keys/${encodeURIComponent(id)}`);
    if (!current || current.id !== id) return;
    current = full;
    $('details-title').textContent = full.name;
    fillDetails(full, full.usage || {});
    buttonsFor(full);
  } catch (err) {
    failed(err, $('details-error'));
  }
}

function buttonsFor(k) {
  const open = k.status !== 'revoked';
  $('d-rotate').hidden = $('d-revoke').hidden = $('d-edit').hidden = $('d-toggle').hidden = !open;
  $('d-toggle').textContent = k.status === 'disabled' ? 'Enable' : 'Disable';
}

$('d-edit').addEventListener('click', () => openEdit(current));
$('d-toggle').addEventListener('click', () => toggle(current));

function fillDetails(k, u) {
  const pair = (name, value) => [h('dt', null, name), h('dd', null, value)];
  const lim = k.limits || {};
  const limits = [['requests_per_minute', 'requests/min'], ['tokens_per_minute', 'tokens/min'], ['max_in_flight', 'in flight'], ['burst', 'burst']]
    .filter(([f]) => lim[f]).map(([f, t]) => `${lim[f].toLocaleString()} ${t}`).join(', ');
  const labels = Object.entries(k.metadata || {});
  $('details-body').replaceChildren(
    ...pair('Id', h('code', null, k.id)),
    ...pair('Key', h('code', null, k.masked_key)),
    ...pair('Status', h('span', { class: `badge ${k.status}` }, k.status)),
    ...pair('Description', k.description || '—'),
    ...pair('Labels', labels.length ? h('span', { class: 'chips' }, labels.map(([n, v]) => h('span', { class: 'chip' }, `${n}=${v}`))) : '—'),
    ...pair('Scopes', (k.scopes || []).join(', ') || '—'),
    ...pair('Models', (k.models || []).join(', ') || 'all models'),
    ...pair('Limits', limits || 'gateway defaults'),
    ...pair('Created', stamp(k.created_at)),
    ...(k.updated_at && k.updated_at !== k.created_at ? pair('Changed', stamp(k.updated_at)) : []),
    ...pair('Last used', k.last_used_at ? `${stamp(k.last_used_at)} (${relative(k.last_used_at)})` : 'never'),
    ...pair('Expires', !k.expires_at ? 'never' : k.status === 'revoked' ? stamp(k.expires_at) : `${stamp(k.expires_at)} (${relative(k.expires_at)})`),
    ...(k.disabled_at ? pair('Disabled', stamp(k.disabled_at)) : []),
    ...(k.rotated_at ? pair('Rotated', stamp(k.rotated_at)) : []),
    ...(k.revoked_at ? pair('Revoked', stamp(k.revoked_at)) : []),
    ...(k.previous_keys_valid || []).flatMap((p) => pair('Old key', `${p.masked_key} works until ${stamp(p.valid_until)}`)));
  const QUOTAS = [['tokens_per_day', 'Tokens today'], ['tokens_per_month', 'Tokens this month'],
    ['requests_per_day', 'Requests today'], ['requests_per_month', 'Requests this month']];
  const q = k.quota;
  $('details-quota').replaceChildren(...(!q ? pair('Loading', '…')
    : !Object.keys(q).length ? pair('Quotas', 'none')
      : QUOTAS.filter(([f]) => q[f]).flatMap(([f, t]) => pair(t,
        `${q[f].remaining.toLocaleString()} left of ${q[f].limit.toLocaleString()} (${q[f].used.toLocaleString()} used; resets ${stamp(q[f].resets_at)})`))));
  $('details-usage').replaceChildren(...(u
    ? [...pair('Requests', (u.requests || 0).toLocaleString()),
      ...pair('Prompt tokens', (u.prompt_tokens || 0).toLocaleString()),
      ...pair('Completion tokens', (u.completion_tokens || 0).toLocaleString()),
      ...pair('Errors', `${((u.client_errors || 0) + (u.upstream_errors || 0)).toLocaleString()} (${u.client_errors || 0} client, ${u.upstream_errors || 0} upstream)`),
      ...pair('Rate limited', (u.rate_limited || 0).toLocaleString()),
      ...pair('Over quota', (u.quota_refused || 0).toLocaleString())]
    : pair('Loading', '…')));
}

const GRACE = { 0: null, 3600: '1 hour', 86400: '24 hours' };

function confirmText() {
  const k = current;
  const mine = k.masked_key === mask(sessionStorage.getItem(STORE) || '');
  if (confirmKind === 'disable') {
    return `You are signed in with “${k.name}” (${k.masked_key}). Disabling it signs you out of this console, and anything ` +
      'else using it gets 401 errors until the key is enabled again (with another admin key, or the CLI).';
  }
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
  const verb = { rotate: 'Rotate', revoke: 'Revoke', disable: 'Disable' }[kind];
  $('confirm-title').textContent = `${verb} “${current.name}”?`;
  $('confirm-ok').textContent = `${verb} key`;
  $('confirm-grace').hidden = !rotate;
  document.querySelector('#confirm-grace input[value="0"]').checked = true;
  $('confirm-text').textContent = confirmText();
  show($('confirm-error'), '');
  const back = { rotate: 'd-rotate', revoke: 'd-revoke', disable: 'd-toggle' }[kind];
  const opener = $('details-dialog').open ? $(back) : document.activeElement;
  openDialog($('confirm-dialog'), opener, $('confirm-dialog').querySelector('[data-close]'));
}

$('d-rotate').addEventListener('click', () => askConfirm('rotate'));
$('d-revoke').addEventListener('click', () => askConfirm('revoke'));
$('confirm-grace').addEventListener('change', () => { $('confirm-text').textContent = confirmText(); });

$('confirm-ok').addEventListener('click', async () => {
  const k = current;
  const btn = $('confirm-ok');
  btn.disabled = true;
  if (confirmKind === 'disable') {
    if (await setEnabled(k, false)) $('confirm-dialog').close();
    else show($('confirm-error'), $('details-dialog').open ? $('details-error').textContent : $('keys-error').textContent);
    btn.disabled = false;
    return;
  }
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

// After every script has run (they share this page's global scope).
document.addEventListener('DOMContentLoaded', () => {
  if (sessionStorage.getItem(STORE)) enter(null);
  else signOut();
});
