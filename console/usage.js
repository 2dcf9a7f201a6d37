// keygate console: the Usage page (GET /v1/usage summed by day, by key and by model: two
// stacked bar charts, the top keys) and the 7-day trend column of the keys table. Days are UTC
// days, as the API counts them.
'use strict';

const SERIES = 5; // the largest series each get a colour; the rest are summed as "other"

// `YYYY-MM-DD` of a time, in UTC.
const utcDay = (t) => new Date(t).toISOString().slice(0, 10);

// Every UTC day from `from` to `to` (both `YYYY-MM-DD`), inclusive.
function daysBetween(from, to) {
  const out = [];
  for (let t = Date.parse(`${from}T00:00:00Z`); t <= Date.parse(`${to}T00:00:00Z`); t += DAY) out.push(utcDay(t));
  return out;
}

function usageQuery(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') p.set(k, v);
  return `/v1/usage?${p}`;
}

// ---- the trend column -------------------------------------------------------------------

let trendsAllowed = true; // false once the API said this admin key has no `usage` scope
let trendLoads = 0;

// One request for the whole page: requests per UTC day over the last 7 days of `list`'s keys.
async function trends(list) {
  const n = ++trendLoads;
  const cells = () => document.querySelectorAll('#keys td[data-trend]');
  const days = daysBetween(utcDay(Date.now() - 6 * DAY), utcDay(Date.now()));
  if (!list.length) return;
  if (!trendsAllowed) {
    for (const td of cells()) td.replaceChildren(h('span', { class: 'muted', title: 'Your admin key has no usage scope' }, '—'));
    return;
  }
  let rows;
  try {
    const answer = await api('GET', usageQuery({ group_by: 'key,day', from: days[0], key_id: list.map((k) => k.id).join(',') }));
    rows = answer.data;
  } catch (err) {
    if (n !== trendLoads) return;
    if (err.status === 403) trendsAllowed = false;
    for (const td of cells()) td.replaceChildren(h('span', { class: 'muted', title: err.message }, '—'));
    return;
  }
  if (n !== trendLoads) return;
  const per = new Map();
  for (const r of rows) {
    const v = per.get(r.key_id) || days.map(() => 0);
    const i = days.indexOf(r.day);
    if (i >= 0) v[i] += r.requests;
    per.set(r.key_id, v);
  }
  for (const td of cells()) {
    const v = per.get(td.dataset.trend) || days.map(() => 0);
    const total = v.reduce((a, b) => a + b, 0);
    td.replaceChildren(sparkline(v, `${total.toLocaleString()} request${total === 1 ? '' : 's'} in the last 7 days`),
      h('span', { class: 'spark-total' }, compact(total)));
  }
}

// ---- the Usage page ---------------------------------------------------------------------

let usageData = null; // { days, byKey, byModel } of the range shown
let usageLoads = 0;

function resetUsage() {
  usageData = null;
  trendsAllowed = true;
  $('usage-form').reset();
  rangeFields();
  for (const id of ['chart-requests', 'chart-tokens']) $(id).replaceChildren();
  $('top-keys').tBodies[0].replaceChildren();
  show($('usage-error'), '');
  show($('usage-status'), '');
}

// The range picked: `{from, to, days}` (dates inclusive), or a message saying what is wrong.
function usageRange() {
  const today = utcDay(Date.now());
  const r = $('u-range').value;
  if (r !== 'custom') {
    const from = utcDay(Date.now() - (Number(r) - 1) * DAY);
    return { from, to: null, days: daysBetween(from, today) };
  }
  const from = $('u-from').value;
  const to = $('u-to').value || today;
  if (!from) return { error: 'Choose the first day of the range.' };
  if (to < from) return { error: 'The last day must not be before the first.' };
  if (daysBetween(from, to).length > 400) return { error: 'Choose at most 400 days.' };
  const next = utcDay(Date.parse(`${to}T00:00:00Z`) + DAY);
  return { from, to: next, days: daysBetween(from, to < today ? to : today) };
}

function rangeFields() {
  const custom = $('u-range').value === 'custom';
  $('u-from-field').hidden = $('u-to-field').hidden = !custom;
  if (custom && !$('u-from').value) {
    $('u-from').value = utcDay(Date.now() - 13 * DAY);
    $('u-to').value = utcDay(Date.now());
  }
}

$('u-range').addEventListener('change', () => {
  rangeFields();
  loadUsage();
});
for (const id of ['u-from', 'u-to']) $(id).addEventListener('change', () => loadUsage());
$('u-split').addEventListener('change', () => usageData && drawUsage());
$('u-reload').addEventListener('click', () => loadUsage());
$('usage-form').addEventListener('submit', (e) => { e.preventDefault(); loadUsage(); });

async function loadUsage() {
  const n = ++usageLoads;
  const range = usageRange();
  if (range.error) return show($('usage-error'), range.error);
  show($('usage-error'), '');
  show($('usage-status'), 'Loading…');
  try {
    const [byKey, byModel] = await Promise.all([
      api('GET', usageQuery({ group_by: 'key,day', from: range.from, to: range.to })),
      api('GET', usageQuery({ group_by: 'model,day', from: range.from, to: range.to })),
    ]);
    if (n !== usageLoads) return;
    usageData = { days: range.days, byKey: byKey.data, byModel: byModel.data };
    drawUsage();
  } catch (err) {
    if (n !== usageLoads) return;
    show($('usage-status'), '');
    failed(err, $('usage-error'));
    if (err.status === 403) show($('usage-error'), `${err.message} The Usage page needs an admin key with the usage scope.`);
  }
}

const tokens = (r) => (r.prompt_tokens || 0) + (r.completion_tokens || 0);

// The series of `rows` (by `split`) for `metric`: the largest SERIES, then "other".
function seriesOf(rows, days, split, metric) {
  const by = new Map();
  for (const r of rows) {
    const id = split === 'key' ? r.key_id : r.model == null ? '' : r.model;
    const name = visible(split === 'key' ? r.key_name || r.key_id : r.model == null ? '(no model)' : r.model);
    const s = by.get(id) || { name, values: days.map(() => 0), total: 0 };
    const i = days.indexOf(r.day);
    if (i >= 0) {
      s.values[i] += metric(r);
      s.total += metric(r);
    }
    by.set(id, s);
  }
  const all = [...by.values()].filter((s) => s.total > 0).sort((a, b) => b.total - a.total || a.name.localeCompare(b.name));
  const top = all.slice(0, SERIES).map((s, i) => ({ ...s, cls: `s${i}` }));
  const rest = all.slice(SERIES);
  if (rest.length) {
    top.push({ name: `${rest.length} other${rest.length === 1 ? '' : 's'}`, cls: 'other', values: days.map((_, i) => rest.reduce((a, s) => a + s.values[i], 0)) });
  }
  return top;
}

function drawChart(el, title, series, days, unit) {
  if (!series.length) {
    el.replaceChildren(h('p', { class: 'muted empty' }, `No ${unit} in this range.`));
    return;
  }
  el.replaceChildren(stackedBars({ days, series, unit, title }), legend(series));
}

function drawUsage() {
  const { days, byKey, byModel } = usageData;
  const split = $('u-split').value;
  const rows = split === 'key' ? byKey : byModel;
  drawChart($('chart-requests'), 'Requests per day', seriesOf(rows, days, split, (r) => r.requests), days, 'requests');
  drawChart($('chart-tokens'), 'Tokens per day', seriesOf(rows, days, split, tokens), days, 'tokens');

  const keysum = new Map();
  for (const r of byKey) {
    const k = keysum.get(r.key_id) || { id: r.key_id, name: r.key_name || r.key_id, requests: 0, prompt: 0, completion: 0, errors: 0, limited: 0 };
    k.requests += r.requests;
    k.prompt += r.prompt_tokens;
    k.completion += r.completion_tokens;
    k.errors += r.client_errors + r.upstream_errors;
    k.limited += r.rate_limited + (r.quota_refused || 0);
    keysum.set(r.key_id, k);
  }
  const top = [...keysum.values()].sort((a, b) => b.prompt + b.completion - a.prompt - a.completion || b.requests - a.requests).slice(0, 10);
  const all = [...keysum.values()].reduce((a, k) => a + k.prompt + k.completion, 0);
  const num = (label, v) => h('td', { 'data-label': label, class: 'num' }, v.toLocaleString());
  $('top-keys').tBodies[0].replaceChildren(...(top.length ? top.map((k) => {
    const share = all ? (k.prompt + k.completion) / all : 0;
    const bar = svgEl('svg', { viewBox: '0 0 100 8', width: 100, height: 8, class: 'share', 'aria-hidden': 'true' },
      svgEl('rect', { x: 0, y: 0, width: 100, height: 8, class: 'share-bg' }),
      svgEl('rect', { x: 0, y: 0, width: Math.round(share * 1000) / 10, height: 8, class: 'share-fg' }));
    return h('tr', null,
      h('td', { 'data-label': 'Key' }, h('button', { type: 'button', class: 'link', 'data-id': k.id, onclick: () => details(k.id) }, k.name)),
      num('Requests', k.requests), num('Prompt tokens', k.prompt), num('Completion tokens', k.completion),
      num('Errors', k.errors), num('Rate limited', k.limited),
      h('td', { 'data-label': 'Share of tokens' }, bar, ` ${Math.round(share * 100)}%`));
  }) : [h('tr', null, h('td', { colspan: 7, class: 'muted' }, 'No usage in this range.'))]));
  const total = byKey.reduce((a, r) => a + r.requests, 0);
  show($('usage-status'), `${days[0]} to ${days[days.length - 1]} (UTC days): ${total.toLocaleString()} requests, ` +
    `${all.toLocaleString()} tokens. Updated ${new Date().toLocaleTimeString()}.`);
}
