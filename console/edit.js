// keygate console: the forms that write a key — generate (POST /v1/api-keys) and edit
// (PATCH /v1/api-keys/{id}). A mistake, found here or by the API (its `param`), is shown as
// plain text under the field it is about.
'use strict';

// ---- field errors -----------------------------------------------------------------------

class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// Shows `text` under `field` (an input, or a fieldset: at its end), or clears it.
function fieldError(field, text) {
  const id = `${field.id}-error`;
  let p = document.getElementById(id);
  if (!p && !text) return;
  if (!p) {
    p = h('p', { id, class: 'field-error' });
    if (field.tagName === 'FIELDSET') field.append(p);
    else {
      const hint = field.nextElementSibling && field.nextElementSibling.classList.contains('hint') ? field.nextElementSibling : null;
      (hint || field).after(p);
    }
    const by = (field.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
    if (!by.includes(id)) field.setAttribute('aria-describedby', [...by, id].join(' '));
  }
  show(p, text);
  if (text) field.setAttribute('aria-invalid', 'true');
  else field.removeAttribute('aria-invalid');
}

function clearErrors(form, general) {
  for (const el of form.querySelectorAll('[aria-invalid]')) fieldError(el, '');
  show(general, '');
}

// The field an API `param` names (`limits.burst`, `models`, `metadata`…), by the longest
// prefix in `fields`, or null (then the message goes to the form's general error).
function fieldOf(param, fields) {
  if (!param) return null;
  const p = param.replace(/\[.*$/, '');
  const name = Object.keys(fields).filter((f) => p === f || p.startsWith(`${f}.`)).sort((a, b) => b.length - a.length)[0];
  return name ? $(fields[name]) : null;
}

// Shows a failed write: next to its field when the API named one, else under the form.
function writeFailed(err, fields, general) {
  const field = err instanceof FieldError ? err.field : fieldOf(err.param, fields);
  if (field && err.status !== 401) {
    fieldError(field, err.message);
    field.focus();
    if (err.code === 'read_only_key_store') setReadOnly(readOnly || 'a write was refused');
    return;
  }
  failed(err, general);
}

function wholeNumber(id) {
  const v = $(id).value.trim();
  if (!v) return null;
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new FieldError($(id), `${$(id).labels[0].textContent} must be a whole number of at least 1.`);
  return Number(v);
}

// The model globs typed as a comma-separated list. A comma inside `{…}` or `[…]` is the
// glob's own (`{llama,qwen}*`), not a separator.
function globs(id) {
  const out = [];
  let depth = 0;
  let cur = '';
  for (const c of $(id).value) {
    if (c === '{' || c === '[') depth++;
    else if ((c === '}' || c === ']') && depth > 0) depth--;
    if (c === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out.map((m) => m.trim()).filter(Boolean);
}

// The end of the day picked in a date input, in the browser's time zone, as RFC 3339 UTC.
function endOfDay(input) {
  const d = new Date(`${input.value}T23:59:59`);
  if (isNaN(d) || d <= Date.now()) throw new FieldError(input, 'Choose an expiry date in the future.');
  return d.toISOString().replace(/\.\d+Z$/, 'Z');
}

function scopeBoxes(container, name, checked) {
  const extra = (checked || []).filter((s) => !SCOPES.some(([n]) => n === s));
  container.replaceChildren(...[...SCOPES, ...extra.map((s) => [s, '', false])].map(([n, text, on]) =>
    h('label', { class: 'choice' }, h('input', { type: 'checkbox', name, value: n, checked: checked ? checked.includes(n) : on }),
      h('code', null, n), text ? ` ${text}` : '')));
}

// ---- generate a key ---------------------------------------------------------------------

const CREATE_FIELDS = {
  name: 'c-name', description: 'c-description', scopes: 'c-scopes-set', models: 'c-models',
  expires_at: 'c-expiry', expires_in_days: 'c-expiry', 'limits.requests_per_minute': 'c-rpm',
  'limits.tokens_per_minute': 'c-tpm', 'limits.max_in_flight': 'c-inflight',
};

scopeBoxes($('c-scopes'), 'scope', null);

$('c-expiry').addEventListener('change', () => {
  const custom = $('c-expiry').value === 'custom';
  $('c-expiry-date').hidden = $('c-expiry-date-label').hidden = !custom;
  $('c-expiry-date').required = custom;
  $('c-expiry-date').min = new Date(Date.now() + DAY).toISOString().slice(0, 10);
});

$('new-key').addEventListener('click', () => {
  $('create-form').reset();
  $('c-expiry').dispatchEvent(new Event('change'));
  clearErrors($('create-form'), $('create-error'));
  openDialog($('create-dialog'), $('new-key'));
});

function createBody() {
  const body = { name: $('c-name').value.trim() };
  if (!body.name) throw new FieldError($('c-name'), 'Give the key a name.');
  const description = $('c-description').value.trim();
  if (description) body.description = description;
  body.scopes = [...document.querySelectorAll('#c-scopes input:checked')].map((c) => c.value);
  if (!body.scopes.length) throw new FieldError($('c-scopes-set'), 'Choose at least one scope.');
  const models = globs('c-models');
  if (models.length) body.models = models;
  const exp = $('c-expiry').value;
  if (exp === 'custom') body.expires_at = endOfDay($('c-expiry-date'));
  else if (exp) body.expires_in_days = Number(exp);
  const limits = {};
  for (const [id, field] of [['c-rpm', 'requests_per_minute'], ['c-tpm', 'tokens_per_minute'], ['c-inflight', 'max_in_flight']]) {
    const v = wholeNumber(id);
    if (v != null) limits[field] = v;
  }
  if (Object.keys(limits).length) body.limits = limits;
  return body;
}

$('create-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const general = $('create-error');
  const btn = e.submitter || $('create-form').querySelector('[type=submit]');
  clearErrors($('create-form'), general);
  btn.disabled = true;
  try {
    const created = await api('POST', '/v1/api-keys', createBody());
    $('create-dialog').close();
    showSecret(created, `Key “${created.name}” created`, $('new-key'));
    load();
  } catch (x) {
    writeFailed(x, CREATE_FIELDS, general);
  } finally {
    btn.disabled = false;
  }
});

// ---- edit a key -------------------------------------------------------------------------

const EDIT_FIELDS = {
  description: 'e-description', metadata: 'e-metadata', scopes: 'e-scopes-set', models: 'e-models',
  expires_at: 'e-expiry', expires_in_days: 'e-expiry', limits: 'e-rpm', 'limits.requests_per_minute': 'e-rpm',
  'limits.burst': 'e-burst', 'limits.tokens_per_minute': 'e-tpm', 'limits.max_in_flight': 'e-inflight',
  quotas: 'e-tpd', 'quotas.tokens_per_day': 'e-tpd', 'quotas.tokens_per_month': 'e-tpmo',
  'quotas.requests_per_day': 'e-rpd', 'quotas.requests_per_month': 'e-rpmo',
};
const LIMIT_INPUTS = [['e-rpm', 'requests_per_minute'], ['e-burst', 'burst'], ['e-tpm', 'tokens_per_minute'], ['e-inflight', 'max_in_flight']];
const QUOTA_INPUTS = [['e-tpd', 'tokens_per_day'], ['e-tpmo', 'tokens_per_month'], ['e-rpd', 'requests_per_day'], ['e-rpmo', 'requests_per_month']];

let editing = null; // the key as it was when the dialog opened

function openEdit(k) {
  if (!k || readOnly) return;
  editing = k;
  $('edit-form').reset();
  clearErrors($('edit-form'), $('edit-error'));
  $('edit-title').textContent = `Edit “${k.name}”`;
  $('e-description').value = k.description || '';
  $('e-metadata').value = Object.entries(k.metadata || {}).map(([n, v]) => `${n}=${v}`).join('\n');
  scopeBoxes($('e-scopes'), 'e-scope', k.scopes || []);
  $('e-models').value = (k.models || []).join(', ');
  for (const [id, f] of LIMIT_INPUTS) $(id).value = (k.limits || {})[f] || '';
  for (const [id, f] of QUOTA_INPUTS) $(id).value = (k.quotas || {})[f] || '';
  $('e-expiry-now').textContent = k.expires_at ? `Now: expires ${stamp(k.expires_at)} (${relative(k.expires_at)}).` : 'Now: never expires.';
  $('e-expiry').querySelector('[value=extend30]').disabled = !k.expires_at;
  $('e-expiry').querySelector('[value=never]').disabled = !k.expires_at;
  $('e-expiry').dispatchEvent(new Event('change'));
  openDialog($('edit-dialog'), $('details-dialog').open ? $('d-edit') : rowButton(k.id), $('e-description'));
}

$('e-expiry').addEventListener('change', () => {
  const custom = $('e-expiry').value === 'custom';
  $('e-expiry-date').hidden = $('e-expiry-date-label').hidden = !custom;
  $('e-expiry-date').min = new Date(Date.now() + DAY).toISOString().slice(0, 10);
});

// `name=value` lines into labels; the API checks the names and values.
// The labels typed as name=value lines. A value is trimmed, unless it is exactly the value
// the key has (`was`): a label nobody touched is never sent as a change.
function labelsOf(text, was = {}) {
  const out = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf('=');
    if (at < 1) throw new FieldError($('e-metadata'), `Line ${i + 1} is not name=value: “${line}”.`);
    const name = line.slice(0, at).trim();
    const value = raw.slice(raw.indexOf('=') + 1);
    out[name] = (was || {})[name] === value ? value : value.trim();
  }
  return out;
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sorted = (o) => Object.fromEntries(Object.entries(o || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

// The PATCH body: only what differs from the key as it was (`null` removes a value).
function editBody(k) {
  const body = {};
  const description = $('e-description').value.trim();
  if (description !== (k.description || '')) body.description = description || null;
  const metadata = labelsOf($('e-metadata').value, k.metadata);
  if (!same(sorted(metadata), sorted(k.metadata))) body.metadata = Object.keys(metadata).length ? metadata : null;
  const scopes = [...document.querySelectorAll('#e-scopes input:checked')].map((c) => c.value);
  if (!scopes.length) throw new FieldError($('e-scopes-set'), 'Choose at least one scope.');
  if (!same([...scopes].sort(), [...(k.scopes || [])].sort())) body.scopes = scopes;
  const models = globs('e-models');
  if (!same(models, k.models || [])) body.models = models.length ? models : null;
  const exp = $('e-expiry').value;
  if (exp === 'never') body.expires_at = null;
  else if (exp === 'in30' || exp === 'in90') body.expires_in_days = Number(exp.slice(2));
  else if (exp === 'custom') body.expires_at = endOfDay($('e-expiry-date'));
  else if (exp === 'extend30') {
    const from = Math.max(Date.parse(k.expires_at), Date.now());
    body.expires_at = new Date(from + 30 * DAY).toISOString().replace(/\.\d+Z$/, 'Z');
  }
  for (const [field, inputs, now] of [['limits', LIMIT_INPUTS, k.limits], ['quotas', QUOTA_INPUTS, k.quotas]]) {
    const patch = {};
    for (const [id, f] of inputs) {
      const v = wholeNumber(id);
      if (v !== ((now || {})[f] || null)) patch[f] = v;
    }
    if (Object.keys(patch).length) body[field] = patch;
  }
  return body;
}

$('edit-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const k = editing;
  const general = $('edit-error');
  const btn = e.submitter || $('edit-form').querySelector('[type=submit]');
  clearErrors($('edit-form'), general);
  btn.disabled = true;
  try {
    const body = editBody(k);
    if (!Object.keys(body).length) {
      $('edit-dialog').close();
      return;
    }
    const after = await api('PATCH', `/v1/api-keys/${encodeURIComponent(k.id)}`, body);
    $('edit-dialog').close();
    if ($('details-dialog').open && current && current.id === k.id) refreshDetails(k.id, after);
    await load();
    show($('keys-status'), `Key “${k.name}” saved. ${$('keys-status').textContent}`);
  } catch (x) {
    writeFailed(x, EDIT_FIELDS, general);
  } finally {
    btn.disabled = false;
  }
});
