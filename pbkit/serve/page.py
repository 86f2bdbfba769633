"""The pages the service shows.

``/`` is the report ``pbkit report --format html`` writes (:func:`pbkit.report.html.page`: the
leaderboards with their filters, the plots, the across-machines view, a page per run), built from
the store's records and rebuilt only when the store changed. Two things are added to it: a line
saying where it comes from, and a short script that asks ``/api/revision`` every few seconds and
reloads the page when a record was stored, keeping the filters chosen and the run opened (the
page's own Content-Security-Policy gains ``connect-src 'self'`` for that one request; it fetches
nothing else). ``/studies`` (submitted studies and their progress) and ``/login`` are the
service's own small pages, rendered by Jinja2 with autoescape: a record's text is never markup.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path

import jinja2

from pbkit.core import record
from pbkit.core.fileio import atomic_write_text
from pbkit.report import html as report_html
from pbkit.serve.store import Store

CSP_PAGE = "default-src 'none';"
CSP_LIVE = "default-src 'none'; connect-src 'self'; form-action 'self';"
# the service's own pages: no script at all
CSP_OWN = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
)

LIVE_JS = """
(function () {
  "use strict";
  var KEY = "pbkit-serve-filters";
  var live = document.getElementById("pb-live");
  if (!live) { return; }
  var rev = live.getAttribute("data-revision");
  var every = Number(live.getAttribute("data-poll-ms")) || 5000;
  var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
  try {  // the filters chosen before the page reloaded itself
    var saved = JSON.parse(sessionStorage.getItem(KEY) || "{}");
    sessionStorage.removeItem(KEY);
    selects.forEach(function (s) {
      var v = saved[s.getAttribute("data-filter")];
      var has = Array.prototype.some.call(s.options, function (o) { return o.value === v; });
      if (v && has) { s.value = v; s.dispatchEvent(new Event("change")); }
    });
  } catch (e) { /* no session storage: the filters start empty */ }
  var state = document.getElementById("pb-live-state");
  function poll() {
    fetch("/api/revision", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (state) { state.textContent = d ? "live" : "not signed in"; }
        if (d && d.revision !== rev) {
          var w = {};
          selects.forEach(function (s) {
            if (s.value) { w[s.getAttribute("data-filter")] = s.value; }
          });
          try { sessionStorage.setItem(KEY, JSON.stringify(w)); } catch (e) { /* none */ }
          location.reload();
          return;
        }
        setTimeout(poll, every);
      }, function () {
        if (state) { state.textContent = "service unreachable; retrying"; }
        setTimeout(poll, every);
      });
  }
  setTimeout(poll, every);
})();
"""

_OWN = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

LOGIN = _OWN.from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pbkit serve · sign in</title>
<style>body{font:15px system-ui,sans-serif;margin:3em auto;max-width:34em}input{width:100%}</style>
</head><body>
<h1>pbkit serve</h1>
{% if message %}<p role="alert">{{ message }}</p>{% endif %}
<form method="post" action="/login">
<label>token <input type="password" name="token" id="token" autocomplete="off" required></label>
<p><button type="submit" id="sign-in">sign in</button></p>
</form>
<p>A token is made by the service's operator:
<code>pbkit serve token create NAME --role read</code>.</p>
</body></html>
"""
)

STUDIES = _OWN.from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{{ refresh }}">
<title>pbkit serve · studies</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}.failed{color:#b00}</style>
</head><body>
<h1>Studies</h1>
<p><a href="/">the report</a> · this page reloads every {{ refresh }} s</p>
<h2>Progress</h2>
{% if progress %}
<table id="progress"><thead><tr><th>study</th><th>done</th><th>failed</th><th>running</th>
<th>pending</th><th>skipped</th><th>ETA</th><th>updated</th><th>by</th></tr></thead><tbody>
{% for p in progress %}
<tr data-study="{{ p.name }}"><td>{{ p.name }}</td>
{% for k in ("done", "failed") %}<td class="{{ k }}">{{ p.counts.get(k, 0) }}</td>{% endfor %}
<td class="running">{{ p.running }}</td>
{% for k in ("pending", "skipped") %}<td class="{{ k }}">{{ p.counts.get(k, 0) }}</td>{% endfor %}
<td>{{ "-" if p.eta_s is none else ("%.0f s" % p.eta_s) }}</td>
<td>{{ p.updated_utc }}</td><td>{{ p.pushed_by }}</td></tr>
{% for f in p.failures %}
<tr class="failed"><td></td>
<td colspan="8">failed {{ f.get("run_id") }}: {{ f.get("error") }}</td></tr>
{% endfor %}
{% endfor %}</tbody></table>
{% else %}<p>No study has reported progress yet.</p>{% endif %}
<h2>Submitted</h2>
{% if submissions %}
<table id="submissions"><thead><tr><th>#</th><th>study</th><th>state</th><th>by</th>
<th>submitted</th><th>runner</th><th>job</th><th>error</th></tr></thead><tbody>
{% for s in submissions %}
<tr data-state="{{ s.state }}"><td>{{ s.id }}</td><td>{{ s.study }}</td><td>{{ s.state }}</td>
<td>{{ s.submitted_by }}</td><td>{{ s.submitted_utc }}</td><td>{{ s.runner }}</td>
<td>{{ s.job_id or "-" }}</td><td>{{ s.error or "" }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}<p>No study was submitted (<code>pbkit submit STUDY.yaml --to URL</code>).</p>{% endif %}
</body></html>
"""
)

EMPTY = _OWN.from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{{ refresh }}">
<title>pbkit report · {{ where }}</title></head><body>
<h1>pbkit report</h1>
<p id="pb-live" data-revision="{{ revision }}">No records in {{ where }} yet: push some with
<code>pbkit push RUN_DIR --to URL</code>. This page reloads every {{ refresh }} s.
<a href="/studies">studies</a></p>
</body></html>
"""
)


class ReportPage:
    """The report of the store's records, rebuilt when the store's revision changes."""

    def __init__(self, store: Store, poll_s: float = 5.0) -> None:
        self.store = store
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._revision: str | None = None
        self._html = ""
        self._records: list[tuple[Path, record.Record]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="pbkit-serve-"))

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def html(self) -> str:
        with self._lock:
            rev = self.store.revision()
            if rev != self._revision:
                self._records = self._materialize()
                self._html = self._build(rev)
                self._revision = rev
            return self._html

    def records(self) -> list[tuple[Path, record.Record]]:
        """The store's records as the report reads them (files, and the records they hold)."""
        with self._lock:
            rev = self.store.revision()
            if rev != self._revision:
                self._records = self._materialize()
                self._html = self._build(rev)
                self._revision = rev
            return list(self._records)

    def _materialize(self) -> list[tuple[Path, record.Record]]:
        out = []
        for info, body in self.store.bodies():
            # the report reads record files (and hashes them): the store's text, as it was pushed
            path = self._dir / "records" / info.key[:20] / record.RECORD_NAME
            if not path.is_file() or path.read_text(encoding="utf-8") != body:
                atomic_write_text(path, body)
            out.append((path, record.validate(json.loads(body), f"record {info.run_id}")))
        return out

    def _build(self, rev: str) -> str:
        where = self.store.shown
        if not self._records:
            return EMPTY.render(where=where, revision=rev, refresh=max(int(self.poll_s), 1))
        page = report_html.page(self._records, [f"pbkit serve ({where})"])
        return live(page, rev, len(self._records), self.poll_s)


def live(page: str, revision: str, n: int, poll_s: float) -> str:
    """The report with its line about the store and the script that reloads it on a change."""
    from html import escape

    if CSP_PAGE not in page or "<main>" not in page or "</body>" not in page:
        return page  # a report laid out otherwise: shown as it is, without live updates
    line = (
        f'<p id="pb-live" class="help" data-revision="{escape(revision)}"'
        f' data-poll-ms="{int(poll_s * 1000)}">Live from pbkit serve: {n} record(s) ·'
        ' <a href="/studies">studies</a> · <a href="/api/records">records (JSON)</a> ·'
        ' <a href="/export/leaderboard.csv">leaderboard (CSV)</a> ·'
        ' <a href="/export/machines.csv">machines (CSV)</a> ·'
        ' <span id="pb-live-state">live</span></p>'
    )
    page = page.replace(CSP_PAGE, CSP_LIVE, 1).replace("<main>", "<main>" + line, 1)
    head, sep, tail = page.rpartition("</body>")
    return head + f"<script>{LIVE_JS}</script>\n" + sep + tail
