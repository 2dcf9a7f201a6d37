// keygate console: the charts, inline SVG built with DOM calls (no library, no innerHTML, no
// style attributes: the CSP allows neither inline style nor another origin). Colours are CSS
// classes (`s0`…`s5`, `other`), so the dark theme applies to them too.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';

function svgEl(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  el.append(...kids.filter((c) => c != null));
  return el;
}

// 1234 → "1.2k", 2500000 → "2.5M": axis labels stay short.
function compact(n) {
  if (n < 1000) return String(Math.round(n * 100) / 100);
  const [d, u] = n < 1e6 ? [1e3, 'k'] : n < 1e9 ? [1e6, 'M'] : [1e9, 'G'];
  const v = n / d;
  return `${v < 10 ? Math.round(v * 10) / 10 : Math.round(v)}${u}`;
}

// A "nice" axis maximum and step (1, 2 or 5 times a power of ten) for values up to `max`.
function niceScale(max, ticks = 4) {
  if (max <= 0) return { top: ticks, step: 1 };
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  const s = Math.max(step, 1);
  return { top: Math.ceil(max / s) * s, step: s };
}

// A stacked bar chart: `days` along x (labels), one stack per day of `series` ({name, cls,
// values[]}, in stacking order). `title` names it for screen readers; each segment has a
// <title> for a tooltip. Returns an <svg> that scales to its container's width.
function stackedBars({ days, series, unit, title }) {
  const W = 640, H = 220, L = 44, R = 8, T = 10, B = 26;
  const totals = days.map((_, i) => series.reduce((a, s) => a + s.values[i], 0));
  const { top, step } = niceScale(Math.max(0, ...totals));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const slot = (W - L - R) / days.length;
  const bw = Math.max(1, Math.min(40, slot * 0.7));
  const sum = totals.reduce((a, b) => a + b, 0);
  const svg = svgEl('svg', {
    viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img',
    'aria-label': `${title}: ${sum.toLocaleString()} ${unit} over ${days.length} days`,
  });
  const grid = svgEl('g', { class: 'grid' });
  for (let v = 0; v <= top; v += step) {
    grid.append(svgEl('line', { x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      svgEl('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, compact(v)));
  }
  svg.append(grid);
  const every = Math.ceil(days.length / 10); // at most about 10 day labels
  const bars = svgEl('g', { class: 'bars' });
  days.forEach((day, i) => {
    const x = L + slot * i + (slot - bw) / 2;
    let base = 0;
    for (const s of series) {
      const v = s.values[i];
      if (!v) continue;
      bars.append(svgEl('rect', { x, y: y(base + v), width: bw, height: Math.max(0.5, y(base) - y(base + v)), class: s.cls },
        svgEl('title', null, `${day} · ${s.name}: ${v.toLocaleString()} ${unit}`)));
      base += v;
    }
    if (i % every === 0 || i === days.length - 1) {
      svg.append(svgEl('text', { x: x + bw / 2, y: H - 8, 'text-anchor': 'middle', class: 'xlabel' }, day.slice(5)));
    }
  });
  svg.append(bars);
  return svg;
}

// The legend for `series`: an HTML list (text set with textContent only).
function legend(series) {
  const ul = document.createElement('ul');
  ul.className = 'legend';
  for (const s of series) {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = `swatch ${s.cls}`;
    sw.setAttribute('aria-hidden', 'true');
    li.append(sw, document.createTextNode(`${s.name} (${s.values.reduce((a, b) => a + b, 0).toLocaleString()})`));
    ul.append(li);
  }
  return ul;
}

// A small trend: one bar per day of `values`, scaled to its own maximum.
function sparkline(values, label) {
  const W = 70, H = 20, gap = 2;
  const max = Math.max(...values);
  const bw = (W - gap * (values.length - 1)) / values.length;
  const svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'spark', role: 'img', 'aria-label': label });
  svg.append(svgEl('title', null, label));
  values.forEach((v, i) => {
    const h = max ? Math.max(v ? 2 : 0, (H - 1) * v / max) : 0;
    svg.append(svgEl('rect', { x: i * (bw + gap), y: H - 1 - h, width: bw, height: h, class: 'spark-bar' }),
      svgEl('rect', { x: i * (bw + gap), y: H - 1, width: bw, height: 1, class: 'spark-base' }));
  });
  return svg;
}
