// keyrelay dashboard's charts: stacked bars in SVG, drawn here (no chart
// library), and the formatting both scripts share. Loaded before app.js;
// everything it offers is on window.KeyrelayCharts.
'use strict';
window.KeyrelayCharts = (() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const num = (n) => (n == null ? '—' : Number(n).toLocaleString('en'));
  const usd = (n) => {
    if (n == null) return '—';
    if (n >= 1 || n === 0) return '$' + n.toFixed(2);
    return n < 0.0001 ? '< $0.0001' : '$' + Number(n.toPrecision(2));
  };
  function clock(ms, seconds = true) {
    const opts = { hour: '2-digit', minute: '2-digit', hour12: false };
    if (seconds) opts.second = '2-digit';
    return new Date(ms).toLocaleTimeString('en-GB', opts);
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) e.setAttribute(name, value);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) e.setAttribute(name, String(value));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const CHARTS = [
    { id: 'requests', title: 'Requests', unit: 'requests', parts: (b) => [[providerOf(b), b.requests || 0]] },
    { id: 'errors', title: 'Errors by class', unit: 'errors', parts: (b) => Object.entries(b.errors || {}) },
    { id: 'tokens', title: 'Tokens', unit: 'tokens', parts: (b) => [[providerOf(b), (b.tokens_in || 0) + (b.tokens_out || 0)]] },
    { id: 'cost', title: 'Cost', unit: 'USD', money: true, parts: (b) => (b.cost_usd == null ? [] : [[providerOf(b), b.cost_usd]]) },
  ];
  const providerOf = (b) => b.provider || '(no provider)';
  // One colour per provider or error class on every chart, in order of
  // first sight.
  const colours = new Map();
  function colour(name) {
    if (!colours.has(name)) colours.set(name, colours.size % 8);
    return 's' + colours.get(name);
  }


  // Every chart from `series` (the answer of /v1/ui/series, or null: no
  // data) and its `buckets` (narrowed to a key or a client); returns the
  // number of non-zero points drawn.
  function draw(series, buckets, windowLabel) {
    let drawn = 0;
    for (const chart of CHARTS) drawn += drawChart(chart, series, buckets, windowLabel);
    return drawn;
  }

  // One chart: a bar per time step, stacked by series (provider, or error
  // class). Returns the number of non-zero points drawn.
  function drawChart(chart, series, buckets, windowLabel) {
    const node = document.getElementById('chart-' + chart.id);
    const W = 600, H = 170, L = 28, R = 8, T = 12, B = 22;
    const slots = series ? Math.max(1, Math.round((series.end_unix_ms - series.start_unix_ms) / (series.step_secs * 1000))) : 60;
    const grid = new Map(); // slot -> Map(series -> value)
    const totals = new Map();
    for (const b of buckets) {
      const slot = Math.min(slots - 1, Math.max(0, Math.floor((b.t_unix_ms - series.start_unix_ms) / (series.step_secs * 1000))));
      for (const [name, value] of chart.parts(b)) {
        if (!(value > 0)) continue;
        if (!grid.has(slot)) grid.set(slot, new Map());
        const cell = grid.get(slot);
        cell.set(name, (cell.get(name) || 0) + value);
        totals.set(name, (totals.get(name) || 0) + value);
      }
    }
    const names = [...totals.keys()].sort();
    const fmt = (v) => (chart.money ? usd(v) : num(Math.round(v)));
    let max = 0, points = 0;
    for (const cell of grid.values()) {
      max = Math.max(max, [...cell.values()].reduce((a, v) => a + v, 0));
      points += cell.size;
    }
    const label = chart.title + ', ' + windowLabel + ': ' + (names.length
      ? names.map((n) => n + ' ' + fmt(totals.get(n))).join(', ')
      : 'no data');
    node.replaceChildren(svg('title', {}, label));
    node.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    node.setAttribute('aria-label', label);
    node.dataset.points = String(points);
    const pw = W - L - R, ph = H - T - B, bw = pw / slots;
    node.append(svg('line', { class: 'axis', x1: L, y1: T + ph, x2: W - R, y2: T + ph }));
    node.append(svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: T + ph }));
    if (series) {
      node.append(svg('text', { x: L, y: H - 6 }, clock(series.start_unix_ms, false)));
      const middle = (series.start_unix_ms + series.end_unix_ms) / 2;
      node.append(svg('text', { x: L + pw / 2, y: H - 6, 'text-anchor': 'middle' }, clock(middle, false)));
      node.append(svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }, clock(series.end_unix_ms, false)));
    }
    if (!points) {
      node.append(svg('text', { class: 'none', x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle' }, 'No data'));
    } else {
      // The scale's top inside the plot, where a long amount fits.
      node.append(svg('line', { class: 'grid', x1: L, y1: T, x2: W - R, y2: T }));
      node.append(svg('text', { x: L + 4, y: T + 14 }, fmt(max)));
      node.append(svg('text', { x: L - 4, y: T + ph, 'text-anchor': 'end' }, '0'));
      for (const [slot, cell] of grid) {
        let y = T + ph;
        for (const name of names) {
          const v = cell.get(name);
          if (!v) continue;
          const h = Math.max(1, (v / max) * ph);
          y -= h;
          const rect = svg('rect', {
            class: colour(name), x: (L + slot * bw + 0.5).toFixed(1), y: y.toFixed(1),
            width: Math.max(1, bw - 1).toFixed(1), height: h.toFixed(1),
          });
          rect.append(svg('title', {}, clock(series.start_unix_ms + slot * series.step_secs * 1000, false) + ' ' + name + ': ' + fmt(v)));
          node.append(rect);
        }
      }
    }
    const legend = document.getElementById('legend-' + chart.id);
    legend.replaceChildren(...names.map((n) => {
      const item = el('li');
      item.append(el('span', { class: 'swatch ' + colour(n), 'aria-hidden': 'true' }), n + ' ' + fmt(totals.get(n)));
      return item;
    }));
    return points;
  }

  return { draw, num, usd, clock, el };
})();
