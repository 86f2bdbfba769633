// pbkit report: sort, filter, hover, open a run. No network, no library.
(function () {
  "use strict";
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };

  // --- sorting: click (or Enter on) a header; numbers numerically, empty cells last
  function sortBy(th) {
    var table = th.closest("table"), col = th.getAttribute("data-col");
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    $$("thead th", table).forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0], rows = $$("tr", body), sign = dir === "ascending" ? 1 : -1;
    function key(tr) {
      var td = tr.querySelector('td[data-col="' + col + '"]');
      var raw = td ? td.getAttribute("data-sort") : "";
      var num = raw === "" ? NaN : Number(raw);
      return { empty: raw === "", num: num, text: raw };
    }
    rows.sort(function (a, b) {
      var ka = key(a), kb = key(b);
      if (ka.empty !== kb.empty) { return ka.empty ? 1 : -1; }
      if (!isNaN(ka.num) && !isNaN(kb.num)) { return sign * (ka.num - kb.num); }
      return sign * ka.text.localeCompare(kb.text);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  $$("table.board thead th[data-col]").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { sortBy(th); } });
  });

  // --- filters: rows, groups, plot points and measured columns
  var selects = $$("select[data-filter]");
  function wanted() {
    var w = {};
    selects.forEach(function (s) { if (s.value) { w[s.getAttribute("data-filter")] = s.value; } });
    return w;
  }
  function matches(el, w, keys) {
    return keys.every(function (k) {
      if (!(k in w)) { return true; }
      var v = el.getAttribute("data-" + k);
      return v === null || v === w[k];
    });
  }
  function apply() {
    var w = wanted(), shown = 0, total = 0;
    var rowKeys = ["model", "dataset", "scope", "target"];
    $$("section.group").forEach(function (g) {
      var visible = 0;
      $$("tr.entry", g).forEach(function (tr) {
        var ok = matches(tr, w, rowKeys);
        if (ok && w.backend) {
          var cell = tr.querySelector('td[data-backend="' + w.backend + '"]');
          ok = !!cell && cell.textContent !== "-";
        }
        tr.classList.toggle("hidden", !ok);
        total += 1; if (ok) { visible += 1; shown += 1; }
      });
      g.classList.toggle("hidden", visible === 0);
    });
    $$("[data-backend]").forEach(function (el) {
      if (el.tagName === "TH" || el.tagName === "TD") {
        el.classList.toggle("hidden", !!w.backend && el.getAttribute("data-backend") !== w.backend);
      }
    });
    $$("svg.scatter g.mark").forEach(function (m) {
      var ok = matches(m, w, rowKeys) && (!w.backend || m.getAttribute("data-backend") === w.backend ||
        m.getAttribute("data-backend") === "macs");
      m.classList.toggle("hidden", !ok);
    });
    $$("#machines tbody tr").forEach(function (tr) { tr.classList.toggle("hidden", !matches(tr, w, ["model", "backend"])); });
    var out = document.getElementById("shown");
    if (out) { out.textContent = shown + " of " + total + " rows shown"; }
  }
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  apply();

  // --- hover: a tooltip with the run (the SVG <title> is the fallback)
  var tip = document.getElementById("tooltip");
  $$("svg.scatter .pt").forEach(function (pt) {
    var title = pt.querySelector("title");
    pt.addEventListener("mouseenter", function (ev) {
      if (!tip || !title) { return; }
      tip.textContent = title.textContent; tip.hidden = false; pt.classList.add("hot");
      tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 10) + "px";
    });
    pt.addEventListener("mouseleave", function () { if (tip) { tip.hidden = true; } pt.classList.remove("hot"); });
    pt.addEventListener("click", function () {
      var run = (pt.getAttribute("data-run") || "").split(",")[0];
      var target = run && document.getElementById("run-" + run.replace(/[^A-Za-z0-9_-]/g, "_"));
      if (target) { openRun(target); }
    });
  });

  // --- a run's page: open its details (links, the URL's #run-..., plot points)
  function openRun(el) {
    el.open = true;
    el.scrollIntoView({ block: "start" });
    if (history.replaceState) { history.replaceState(null, "", "#" + el.id); }
  }
  $$("a.run-link").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      var el = document.getElementById(a.getAttribute("href").slice(1));
      if (el) { ev.preventDefault(); openRun(el); }
    });
  });
  if (location.hash.indexOf("#run-") === 0) {
    var first = document.getElementById(location.hash.slice(1));
    if (first) { openRun(first); }
  }

  // --- a run's page and full record: unpacked from the page itself (gzip + base64) on first opening
  var packed = null;
  function unpack() {
    if (packed) { return packed; }
    var node = document.getElementById("pb-records");
    var bin = atob(node.textContent.trim()), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
    if (typeof DecompressionStream === "undefined") {
      packed = Promise.reject(new Error("this browser cannot unpack the run pages (no DecompressionStream)"));
      return packed;
    }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    packed = new Response(stream).text().then(JSON.parse);
    return packed;
  }
  function fill(run) {
    var body = run.querySelector("div.body");
    if (!body || body.getAttribute("data-loaded")) { return; }
    var id = body.getAttribute("data-run");
    unpack().then(function (all) {
      body.innerHTML = all.pages[id];  // the page's own markup, escaped when it was written
      body.setAttribute("data-loaded", "1");
      $$("details.full", body).forEach(function (d) {
        d.addEventListener("toggle", function () {
          if (d.open) { d.querySelector("pre").textContent = JSON.stringify(all.records[id], null, 2); }
        });
      });
    }, function (err) { body.textContent = String(err.message || err); });
  }
  $$("details.run").forEach(function (d) {
    d.addEventListener("toggle", function () { if (d.open) { fill(d); } });
    if (d.open) { fill(d); }
  });
})();
