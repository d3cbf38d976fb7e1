// The agent console's analytics page: the desk's figures for the business
// (`AnalyticsService.Query`, asked as the console's `query_analytics` desk
// call), drawn with uPlot, which the binary serves as it is: no build step.
//
// Four views of one time range: volume (conversations opened and messages
// by side), first response and resolution times (median and p90), CSAT
// (average and how many answered), and a table per agent.

(function () {
  'use strict';

  const HOUR = 3600e3;
  /** @type {any} */
  const uPlot = /** @type {any} */ (window).uPlot;

  /** @typedef {Record<string, any>} Row An `AnalyticsRow`, snake_case, uint64s as strings. */

  /** @param {any} value @returns {number} */
  const num = (value) => Number(value || 0);

  /** @param {number} seconds @returns {string} */
  function duration(seconds) {
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  /** @param {string} tag @param {string} [text] @returns {HTMLElement} */
  function el(tag, text) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /**
   * One chart: `series` are [label, colour, values] over `xs`, in seconds
   * within `range`.
   * @param {HTMLElement} box @param {string} title @param {[number, number]} range @param {number[]} xs
   * @param {[string, string, (number|null)[]][]} series @param {(v: number) => string} [format]
   */
  function chart(box, title, range, xs, series, format) {
    const figure = el('figure');
    figure.dataset.chart = title;
    figure.append(el('figcaption', title));
    box.append(figure);
    if (!xs.length) {
      figure.append(el('p', 'Nothing yet in this range.'));
      return;
    }
    const value = format || ((/** @type {number} */ v) => String(v));
    new uPlot(
      {
        width: 420,
        height: 190,
        series: [{}, ...series.map(([label, stroke]) => ({
          label, stroke, width: 2, fill: stroke + '22', points: { show: xs.length < 40 }, value: (/** @type {any} */ _u, /** @type {number|null} */ v) => (v == null ? '–' : value(v)),
        }))],
        axes: [{}, { values: (/** @type {any} */ _u, /** @type {number[]} */ ticks) => ticks.map(value), size: 60 }],
        scales: { x: { time: true, range: () => range } },
      },
      [xs, ...series.map(([, , values]) => values)],
      figure,
    );
  }

  /**
   * Fills `root` with the figures of the last `days` days.
   * @param {HTMLElement} root
   * @param {(call: object) => Promise<any>} deskCall
   * @param {number} days
   */
  async function show(root, deskCall, days) {
    const to = Math.floor(Date.now() / HOUR) * HOUR + HOUR;
    const from = to - days * 24 * HOUR;
    const period = days <= 2 ? 'ANALYTICS_PERIOD_HOUR' : 'ANALYTICS_PERIOD_DAY';
    /** @param {string} group_by @param {string} period @returns {Promise<Row[]>} */
    const query = (group_by, period) =>
      deskCall({ query_analytics: { query: { from: new Date(from).toISOString(), to: new Date(to).toISOString(), group_by, period } } })
        .then((a) => a.query_analytics.rows || []);
    const [overTime, byAgent] = await Promise.all([
      query('ANALYTICS_GROUP_TENANT', period),
      query('ANALYTICS_GROUP_AGENT', 'ANALYTICS_PERIOD_TOTAL'),
    ]);
    const xs = overTime.map((r) => Date.parse(r.start) / 1000);
    /** @type {[number, number]} */
    const range = [from / 1000, to / 1000];
    /** @param {string} field @returns {(number|null)[]} */
    const col = (field) => overTime.map((r) => (r[field] == null ? null : num(r[field])));
    const charts = el('div');
    charts.className = 'charts';
    chart(charts, 'Volume', range, xs, [
      ['Conversations opened', '#2563eb', col('opened')],
      ['Customer messages', '#1a7f37', col('messages_customer')],
      ['Agent messages', '#bf8700', col('messages_agent')],
    ]);
    chart(charts, 'First response', range, xs, [
      ['Median', '#2563eb', col('first_response_median_seconds')],
      ['p90', '#d1242f', col('first_response_p90_seconds')],
    ], duration);
    chart(charts, 'Resolution', range, xs, [
      ['Median', '#2563eb', col('resolution_median_seconds')],
      ['p90', '#d1242f', col('resolution_p90_seconds')],
    ], duration);
    chart(charts, 'CSAT', range, xs, [
      ['Average (1–5)', '#1a7f37', col('csat_average')],
      ['Ratings', '#8c959f', col('csat_count')],
    ], (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)));

    const table = el('table');
    table.id = 'per-agent';
    const head = el('tr');
    for (const h of ['Agent', 'Opened', 'Replies', 'First response (median)', 'Missed SLA', 'Resolved', 'Resolution (median)', 'CSAT']) head.append(el('th', h));
    table.append(head);
    for (const r of byAgent) {
      const tr = el('tr');
      tr.dataset.agent = r.agent_id || '';
      const median = (/** @type {any} */ s) => (s == null ? '–' : duration(num(s)));
      const csat = r.csat_average == null ? '–' : `${num(r.csat_average).toFixed(1)} (${num(r.csat_count)})`;
      for (const cell of [r.agent_id || 'unassigned', num(r.opened), num(r.messages_agent), median(r.first_response_median_seconds),
        num(r.sla_missed), num(r.resolutions), median(r.resolution_median_seconds), csat]) tr.append(el('td', String(cell)));
      table.append(tr);
    }
    root.replaceChildren(charts, el('h2', 'Per agent'), table);
  }

  /** @type {any} */ (window).natterAnalytics = { show };
})();
