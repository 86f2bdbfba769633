"""The pages the service shows.

``/`` is the report ``pbkit report --format html`` writes (:func:`pbkit.report.html.page`: the
leaderboards with their filters, the plots, the across-machines view, a page per run), built from
the store's records and rebuilt only when the store changed. Two things are added to it: a line
saying where it comes from, and a short script that asks ``/api/revision`` every few seconds and
reloads the page when a record was stored, keeping the filters chosen and the run opened (the
page's own Content-Security-Policy gains ``connect-src 'self'`` for that one request; it fetches
nothing else). A run's ONNX files stored with its record (``pbkit push --artifacts``) are linked
under its summary, to download. ``/studies`` (submitted studies and their progress),
``/submit`` and ``/login`` are the service's own small pages, rendered by Jinja2 with autoescape:
a record's text is never markup.

``/submit`` is a form that submits a study file (pasted, or read from a file in the browser).
Its script (:data:`SUBMIT_JS`, served from the service: no inline script) asks for a submit
token once, keeps it in the tab's ``sessionStorage`` and sends it as an ``Authorization``
header; the sign-in cookie never submits, so another site cannot submit through a signed-in
browser (a cross-site request can neither read the token nor set that header without a CORS
preflight, which the service never grants).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import jinja2

from pbkit.core import record
from pbkit.core.fileio import atomic_write_text
from pbkit.report import html as report_html
from pbkit.serve.store import Artifact, Progress, Store, Submission

CSP_PAGE = "default-src 'none';"
CSP_LIVE = "default-src 'none'; connect-src 'self'; form-action 'self';"
# the service's own pages: no script at all
CSP_OWN = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
)
# the submission form: its one script from the service, which may fetch from the service only
CSP_SUBMIT = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'"
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

SUBMIT_JS = """
(function () {
  "use strict";
  var KEY = "pbkit-submit-token";  // this tab only; never a cookie: a form elsewhere cannot use it
  function $(id) { return document.getElementById(id); }
  var form = $("submit-form"), ask = $("token-ask"), kept = $("token-kept");
  var input = $("submit-token");
  var text = $("study-text"), file = $("study-file"), out = $("submit-result");
  var maxBytes = Number(form.getAttribute("data-max-bytes")) || 262144;
  function stored() { try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; } }
  function keep(t) { try { sessionStorage.setItem(KEY, t); } catch (e) { /* none: asked again */ } }
  function forget() { try { sessionStorage.removeItem(KEY); } catch (e) { /* none */ } shown(); }
  function shown() { var has = !!stored(); ask.hidden = has; kept.hidden = !has; }
  function say(kind, message, link) {  // text only: what the service answers is never markup
    out.className = kind;
    out.textContent = message;
    if (link) {
      var a = document.createElement("a");
      a.href = link; a.textContent = "its progress";
      out.appendChild(document.createTextNode(" · ")); out.appendChild(a);
    }
  }
  $("forget-token").addEventListener("click", function () { forget(); input.focus(); });
  file.addEventListener("change", function () {
    var f = file.files && file.files[0];
    if (!f) { return; }
    if (f.size > maxBytes) { say("error", f.name + " is over " + maxBytes + " bytes"); return; }
    f.text().then(function (t) { text.value = t; say("", f.name + " read: submit it"); },
                  function (e) { say("error", "could not read " + f.name + ": " + e); });
  });
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var token = input.value.trim() || stored();
    if (!token) { say("error", "a submit token is needed"); input.focus(); return; }
    if (!text.value.trim()) { say("error", "paste a study file, or choose one"); return; }
    keep(token); input.value = ""; shown();
    say("", "submitting...");
    fetch("/api/studies", {
      method: "POST",
      headers: { "Authorization": "Bearer " + token, "Content-Type": "application/yaml" },
      body: text.value,
      credentials: "omit",
      cache: "no-store"
    }).then(function (r) {
      return r.json().then(function (d) { return [r.status, d]; },
                           function () { return [r.status, { error: "HTTP " + r.status }]; });
    }).then(function (got) {
      var status = got[0], d = got[1];
      if (status === 201) {
        say("ok", "study " + d.study + " submitted as #" + d.id + " (" + d.trials +
            " trial(s), runner " + d.runner + ")", "/studies");
        return;
      }
      if (status === 401) { forget(); }  // (a wrong or revoked token is asked for again)
      say("error", "refused (" + status + "): " + (d.error || "no reason given"));
    }, function (e) { say("error", "the service did not answer: " + e); });
  });
  shown();
})();
"""

SUBMIT = _OWN.from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pbkit serve · submit a study</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}
textarea{width:100%;font:13px ui-monospace,monospace}.error{color:#b00}.ok{color:#060}
.help{color:#555}</style>
<script src="/assets/submit.js" defer></script>
</head><body>
<h1>Submit a study</h1>
<p><a href="/">the report</a> · <a href="/studies">studies</a></p>
{% if why_not %}<p role="alert" id="runner-unavailable">This service takes no studies now:
{{ why_not }}</p>{% endif %}
<p class="help">A study file (YAML or JSON, at most {{ max_kib }} KiB) as
<code>pbkit study run</code> reads it, whole: no <code>extends</code> (<code>pbkit submit
STUDY.yaml --to URL</code> inlines it). The service runs no user code: models from Python files,
import paths or pickles, and settings that name files, are refused. Runner: {{ runner }}.</p>
<form id="submit-form" data-max-bytes="{{ max_kib * 1024 }}">
<p id="token-ask"><label>submit token
<input type="password" id="submit-token" autocomplete="off" size="50"></label><br>
<span class="help">asked once: kept in this tab only (sessionStorage) and sent as an
Authorization header, never as a cookie.</span></p>
<p id="token-kept" hidden>A submit token is kept for this tab.
<button type="button" id="forget-token">forget it</button></p>
<p><label>study file <input type="file" id="study-file" accept=".yaml,.yml,.json"></label></p>
<p><label>or paste it<br><textarea id="study-text" rows="18" spellcheck="false"></textarea>
</label></p>
<p><button type="submit" id="submit-study">submit</button></p>
</form>
<noscript><p>This form needs JavaScript; <code>pbkit submit STUDY.yaml --to URL</code> does
not.</p></noscript>
<p id="submit-result" role="status"></p>
</body></html>
"""
)

STUDIES = _OWN.from_string(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{{ refresh }}">
<title>pbkit serve · studies</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}
tr.failed,td.error{color:#b00}</style>
</head><body>
<h1>Studies</h1>
<p><a href="/">the report</a> · <a href="/submit">submit a study</a> · this page reloads
every {{ refresh }} s</p>
<h2>Progress</h2>
{% if progress %}
<table id="progress"><thead><tr><th>study</th><th>done</th><th>failed</th><th>running</th>
<th>pending</th><th>skipped</th><th>ETA</th><th>updated</th><th>by</th></tr></thead><tbody>
{% for p in progress %}
<tr data-study="{{ p.name }}"><td>{{ p.name }}</td>
{% for k in ("done", "failed") %}<td class="{{ k }}">{{ p.counts.get(k, 0) }}</td>{% endfor %}
<td class="running">{{ p.running }}</td>
{% for k in ("pending", "skipped") %}<td class="{{ k }}">{{ p.counts.get(k, 0) }}</td>{% endfor %}
<td>{{ eta(p.eta_s) }}</td>
<td>{{ p.updated_utc }}</td><td>{{ p.pushed_by }}</td></tr>
{% for f in p.failures %}
<tr class="failed"><td></td>
<td colspan="8">failed {{ f.get("run_id") }}: {{ f.get("error") }}</td></tr>
{% endfor %}
{% endfor %}</tbody></table>
{% else %}<p>No study has reported progress yet.</p>{% endif %}
<h2>Submitted</h2>
{% if why_not %}<p role="alert">This service takes no studies now: {{ why_not }}</p>{% endif %}
{% if submissions %}
<table id="submissions"><thead><tr><th>#</th><th>study</th><th>state</th><th>done</th>
<th>failed</th><th>running</th><th>pending</th><th>ETA</th><th>by</th><th>submitted</th>
<th>runner</th><th>job</th><th>error</th></tr></thead><tbody>
{% for v in submissions %}{% set s = v.s %}{% set p = v.progress %}
<tr data-state="{{ s.state }}" data-id="{{ s.id }}"><td>{{ s.id }}</td><td>{{ s.study }}</td>
<td class="state">{{ s.state }}</td>
{% if p %}{% for k in ("done", "failed") %}<td class="{{ k }}">{{ p.counts.get(k, 0) }}</td>
{% endfor %}<td class="running">{{ p.running }}</td>
<td class="pending">{{ p.counts.get("pending", 0) }}</td><td class="eta">{{ eta(p.eta_s) }}</td>
{% else %}<td class="done">-</td><td class="failed">-</td><td class="running">-</td>
<td class="pending">-</td><td class="eta">-</td>{% endif %}
<td>{{ s.submitted_by }}</td><td>{{ s.submitted_utc }}</td><td>{{ s.runner }}</td>
<td>{{ s.job_id or "-" }}</td><td class="error">{{ s.error or "" }}</td></tr>
{% if p %}{% for f in p.failures %}
<tr class="failed"><td></td>
<td colspan="12">failed {{ f.get("run_id") }}: {{ f.get("error") }}</td></tr>
{% endfor %}{% endif %}
{% endfor %}
</tbody></table>
{% else %}<p>No study was submitted (<a href="/submit">the form</a>, or
<code>pbkit submit STUDY.yaml --to URL</code>).</p>{% endif %}
</body></html>
"""
)


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class SubmissionView:
    """A submission and its study's progress, where its own driver reported it."""

    s: Submission
    progress: Progress | None


def studies(
    progress: list[Progress], submissions: list[Submission], refresh: int, why_not: str | None
) -> str:
    """``/studies``: every study's progress, and each submission with its own driver's."""
    by = {p.pushed_by: p for p in progress}
    views = [SubmissionView(s, by.get(f"submission-{s.id}")) for s in reversed(submissions)]
    return STUDIES.render(
        progress=progress, submissions=views, refresh=refresh, why_not=why_not, eta=eta
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
        page = live(page, rev, len(self._records), self.poll_s)
        return with_artifacts(page, self.store.artifacts())


def live(page: str, revision: str, n: int, poll_s: float) -> str:
    """The report with its line about the store and the script that reloads it on a change."""
    from html import escape

    if CSP_PAGE not in page or "<main>" not in page or "</body>" not in page:
        return page  # a report laid out otherwise: shown as it is, without live updates
    line = (
        f'<p id="pb-live" class="help" data-revision="{escape(revision)}"'
        f' data-poll-ms="{int(poll_s * 1000)}">Live from pbkit serve: {n} record(s) ·'
        ' <a href="/studies">studies</a> · <a href="/submit">submit a study</a> ·'
        ' <a href="/api/records">records (JSON)</a> ·'
        ' <a href="/export/leaderboard.csv">leaderboard (CSV)</a> ·'
        ' <a href="/export/machines.csv">machines (CSV)</a> ·'
        ' <span id="pb-live-state">live</span></p>'
    )
    page = page.replace(CSP_PAGE, CSP_LIVE, 1).replace("<main>", "<main>" + line, 1)
    head, sep, tail = page.rpartition("</body>")
    return head + f"<script>{LIVE_JS}</script>\n" + sep + tail


def with_artifacts(page: str, stored: list[Artifact]) -> str:
    """Each run's stored ONNX files, linked under its summary (to download)."""
    import urllib.parse
    from html import escape

    by_run: dict[str, list[Artifact]] = {}
    for a in stored:
        by_run.setdefault(a.run_id, []).append(a)
    for run_id, arts in by_run.items():
        opening = f'<details class="run" id="{escape(report_html.anchor(run_id))}">'
        at = page.find(opening)
        end = page.find("</summary>", at) if at >= 0 else -1
        if end < 0:
            continue  # (a run the report leaves out, or laid out otherwise)
        links = " · ".join(
            f'<a class="artifact" download href="/api/artifacts/{a.record_key}/'
            f'{urllib.parse.quote(a.name)}">{escape(a.name)}</a>'
            f" ({escape(a.label)}, {a.size / 1e6:.1f} MB, {escape(a.machine)})"
            for a in arts
        )
        block = f'\n  <p class="artifacts help" data-run="{escape(run_id)}">ONNX: {links}</p>'
        cut = end + len("</summary>")
        page = page[:cut] + block + page[cut:]
    return page
