"""The page's inline style and script: no library, nothing fetched (the report opens from disk,
offline). The script sorts tables, shows ``data-tip`` values on hover, and toggles chart series."""

STYLE = """
:root { --fg: #1b1b1b; --muted: #5a5a5a; --line: #d6d6d6; --accent: #0072B2; --bg: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header.top { position: sticky; top: 0; z-index: 5; background: #f4f6f8; border-bottom: 1px solid var(--line);
             padding: 6px 18px; display: flex; gap: 18px; align-items: baseline; flex-wrap: wrap; }
header.top strong { font-size: 16px; }
header.top a { color: var(--accent); text-decoration: none; font-size: 14px; }
main, .page { max-width: 1180px; margin: 0 auto; padding: 8px 18px 40px; }
nav.toc { columns: 2; font-size: 14px; border: 1px solid var(--line); border-radius: 6px;
          padding: 8px 14px 8px 28px; }
nav.toc li { break-inside: avoid; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; }
code { font: 12.5px/1.3 ui-monospace, Menlo, Consolas, monospace; background: #f1f1f1; padding: 0 3px;
       border-radius: 3px; }
.table-wrap { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13.5px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; position: relative; }
table.sortable th { cursor: pointer; user-select: none; padding-right: 18px; }
table.sortable th::after { content: "\\2195"; position: absolute; right: 4px; color: #aaa; font-size: 11px; }
table.sortable th[aria-sort="ascending"]::after { content: "\\25B2"; color: var(--fg); }
table.sortable th[aria-sort="descending"]::after { content: "\\25BC"; color: var(--fg); }
tbody tr:nth-child(even) { background: #fafafa; }
tbody tr:hover { background: #eef5fb; }
td a.concept { font-weight: 600; }
figure { margin: 12px 0 18px; }
figcaption { color: var(--muted); font-size: 13px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
svg.chart { max-width: 100%; height: auto; font: 11px system-ui, sans-serif; overflow: visible; }
svg.chart .tick { fill: #333; } svg.chart .axis { fill: #333; font-size: 12px; }
svg.chart .panel-title { font-size: 12px; font-weight: 600; }
svg.chart .frame { fill: none; stroke: #999; } svg.chart .grid { stroke: #e6e6e6; }
svg.chart .cell:hover, svg.chart .point:hover { stroke: #000; stroke-width: 1.5; }
svg.chart .series.off { display: none; }
svg.chart line, svg.chart text, svg.chart polyline { pointer-events: none; }  /* hover reaches the marks */
.legend { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0; }
.toggle { font: 12px system-ui, sans-serif; border: 1px solid var(--line); background: #fff; border-radius: 12px;
          padding: 1px 9px 1px 6px; cursor: pointer; display: inline-flex; align-items: center; gap: 5px; }
.toggle[aria-pressed="false"] { opacity: 0.45; text-decoration: line-through; }
.swatch { display: inline-block; width: 18px; border-top: 3px solid; }
.swatch.dashed { border-top-style: dashed; }
#tip { position: fixed; pointer-events: none; z-index: 20; background: #222; color: #fff; font-size: 12px;
       padding: 3px 7px; border-radius: 4px; display: none; max-width: 420px; }
details.png summary { cursor: pointer; color: var(--muted); font-size: 12.5px; }
.page { display: none; }
.page:target { display: block; }
body:has(.page:target) main { display: none; }
/* an anchor inside a page (a tower's section, a world's heads) shows its page too */
.page:has(:target) { display: block; }
body:has(.page :target) main { display: none; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 170px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12.5px; }
.missing { color: var(--muted); font-style: italic; }
/* examples (examples.py): thumbnails with patch heatmaps, token strips */
.examples { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 14px; }
figure.example { margin: 0; width: 112px; font-size: 12px; }
figure.example.text { width: auto; max-width: 100%; }
.ex-img { position: relative; width: 96px; height: 96px; }
.ex-img img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid var(--line); }
.ex-img svg.heat { position: absolute; left: 0; top: 0; }
.ex-img svg.heat .cell:hover { stroke: #000; stroke-width: 1.5; }
.toks { font: 13px ui-monospace, Menlo, Consolas, monospace; }
.tok { padding: 1px 2px; border-radius: 2px; }
.ex-label { font-weight: 600; } .ex-score, .ex-note { color: var(--muted); }
.ex-title { margin: 10px 0 2px; font-weight: 600; }
/* feature histograms (features.py), the head grid (heads.py) */
svg.chart.hist g.point:hover rect:last-child { stroke: #000; stroke-width: 1.2; }
table.head-grid td.head-cell { min-width: 86px; cursor: default; }
table.head-grid td.head-cell:hover { background: #eef5fb; outline: 1px solid #000; }
.head-key { padding: 0 8px 0 5px; margin-right: 6px; font-size: 13px; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  // Sortable tables: click a header; numbers sort as numbers ("0.512 ± 0.010" sorts by 0.512).
  function key(cell) {
    var t = (cell.getAttribute("data-sort") || cell.textContent).trim();
    var m = t.match(/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?/i);
    return m ? {n: parseFloat(m[0]), t: t} : {n: null, t: t.toLowerCase()};
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    if (!body) return;
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col] || a.cells[0]), y = key(b.cells[col] || b.cells[0]);
      if (x.n !== null && y.n !== null) return dir * (x.n - y.n);
      if (x.n !== null) return -1;
      if (y.n !== null) return 1;
      return dir * (x.t < y.t ? -1 : x.t > y.t ? 1 : 0);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.setAttribute("tabindex", "0");
      th.addEventListener("click", function () { sortBy(table, col, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(table, col, th); });
    });
  });
  // Hover values: any element with data-tip.
  var tip = document.createElement("div");
  tip.id = "tip";
  tip.setAttribute("role", "status");
  document.body.appendChild(tip);
  document.addEventListener("mouseover", function (e) {
    var el = e.target.closest ? e.target.closest("[data-tip]") : null;
    if (!el) { tip.style.display = "none"; return; }
    tip.textContent = el.getAttribute("data-tip");
    tip.style.display = "block";
  });
  document.addEventListener("mousemove", function (e) {
    tip.style.left = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = (e.clientY + 16) + "px";
  });
  // Series toggles: a legend button shows or hides its series in every panel of its chart.
  document.querySelectorAll("button.toggle").forEach(function (b) {
    b.addEventListener("click", function () {
      var on = b.getAttribute("aria-pressed") !== "true";
      b.setAttribute("aria-pressed", on ? "true" : "false");
      var chart = document.getElementById(b.getAttribute("data-chart"));
      chart.querySelectorAll("g.series").forEach(function (g) {
        if (g.getAttribute("data-series") === b.getAttribute("data-series")) g.classList.toggle("off", !on);
      });
    });
  });
  // A page (concept, feature) shown by its #anchor starts at the top of the window.
  window.addEventListener("hashchange", function () {
    var el = location.hash && document.getElementById(location.hash.slice(1));
    if (el && el.classList.contains("page")) window.scrollTo(0, 0);
  });
})();
"""
