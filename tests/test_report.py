"""`audit report`: one self-contained HTML file from the catalog of `audit demo` — summary, gates, a section per
probe with its figures — that a headless Chromium loads with no console error and every image drawn; a third-party
plugin's figures join with no change to the core; a broken renderer costs only its own figures."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from audit.catalog.store import Catalog
from audit.face.report import select_results
from conftest import audit_cli, run_audit, stored_result
from external_plugin import install_plugin

CHROMIUM = Path("/usr/bin/chromium")


def catalog_of(project: Path) -> Path:
    return project / ".audit" / "catalog.duckdb"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def ok_probes(catalog: Path) -> set[str]:
    _, rows = Catalog(catalog).query("select distinct probe from results where status = 'ok'")
    return {r[0] for r in rows}


@pytest.fixture(scope="module")
def report(demo_catalog: Path, tmp_path_factory) -> tuple[Path, str, object]:
    """The report of the demo project, built once with its audit.toml (gates) from inside the project."""
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    before = sha(catalog_of(demo_catalog))
    r = audit_cli("report", "--out", str(out), cwd=demo_catalog)
    assert r.returncode == 0, r.stderr
    assert sha(catalog_of(demo_catalog)) == before  # read-only: the catalog is not touched
    return out, out.read_text(encoding="utf-8"), r


def test_report_is_one_self_contained_file_with_summary_gates_and_a_section_per_probe(report, demo_catalog):
    out, html, r = report
    assert f"wrote {out}" in r.stderr and "figure failed" not in r.stderr
    assert html.startswith("<!doctype html>")
    # nothing external: no URL in any src/href, every image embedded, a CSP that forbids anything else
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<(?:script|link|iframe|object|embed)\b", html, re.I)
    assert "default-src 'none'; img-src data:" in html
    srcs = images(html)
    assert len(srcs) >= 8
    for src in srcs:
        head, _, payload = src.partition(",")
        assert head in ("data:image/png;base64", "data:image/svg+xml;base64")
        raw = base64.b64decode(payload, validate=True)
        assert len(raw) > 1000 and (raw.startswith(b"\x89PNG\r\n\x1a\n") or raw.lstrip().startswith(b"<"))
    # summary and gates (the demo's audit.toml has gates), then a section for every probe in the catalog
    assert '<section id="summary">' in html and '<section id="gates">' in html
    assert re.search(r"\d+ of \d+ gate check\(s\) passed", html)
    probes = ok_probes(catalog_of(demo_catalog))
    assert {"cka", "entk", "trimmed_ks", "embedding"} <= probes
    for probe in probes:
        assert f'<section id="probe-{probe}" class="probe">' in html
    # the numbers are the catalog's, and each built-in probe drew its figures
    _, rows = Catalog(catalog_of(demo_catalog)).query(
        "select value from latest_metrics where probe = 'cka' and metric = 'accuracy' and model = 'mlp_a' "
        "and dataset = 'digits_test'"
    )
    assert f"{rows[0][0]:.6g}" in html
    for title in (
        "layer×layer CKA",
        "off-diagonal CKA and eigenvalue spectrum",
        "kernel spectra",
        "weight spectra",
        "α̂ of each model",
        "cand_long against the reference",
        "sources in PCA and LDA",
    ):
        assert f"<b>{title}</b>" in html, title


def test_report_filters_by_run_model_and_probe(demo_catalog, tmp_path):
    cat = catalog_of(demo_catalog)
    out = tmp_path / "r.html"
    r = audit_cli("report", "--catalog", str(cat), "--probe", "cka", "--model", "mlp_b", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert 'id="probe-cka"' in html and 'id="probe-entk"' not in html
    assert html.count('<article class="result"') == 1  # only the mlp_a × mlp_b job names mlp_b
    assert "no gates configured" in html  # no audit.toml in the working directory
    _, runs = Catalog(cat).query("select run_id from runs")
    r = audit_cli("report", "--catalog", str(cat), "--run", runs[0][0][:6], "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"results computed in run {runs[0][0]}" in out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "0123456789abcdef"], "no run with id '0123456789abcdef'"),
        (["--model", "ghost"], "no stored result has model 'ghost'"),
        (["--probe", "nosuchprobe"], "no stored result has probe 'nosuchprobe'"),
        (["--catalog", "/nonexistent/c.duckdb"], "no catalog at /nonexistent/c.duckdb"),
        (["--out", "{tmp}"], "it is a directory"),
        (["--out", "{tmp}/file.txt/report.html"], "is not a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(mini_catalog, tmp_path, args, message):
    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--catalog" not in args:
        args += ["--catalog", str(catalog_of(mini_catalog))]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "r.html")]
    r = audit_cli("report", *args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_catalog_without_results_is_one_line_and_exit_2(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    cat.start_run({})
    r = audit_cli("report", "--catalog", str(cat.path), "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    assert r.returncode == 2 and "no results" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- a third-party plugin's figures

PLUGIN = '''
"""A third-party plugin: a probe of its own and a figure renderer for its results (SVG, no matplotlib)."""
from audit import Figure, Needs, Probe, ProbeResult, hookimpl


class Histo(Probe):
    name = "ext_histo"
    version = "2.0.0"
    description = "An external probe that stores a histogram (a test plugin)."
    needs = Needs(models=(1, 1), datasets=(1, 1))

    def run(self, ctx, params):
        return ProbeResult()


@hookimpl
def register_probes(register):
    register(Histo())


@hookimpl
def render_figures(result):
    if result.probe != "ext_histo":
        return None
    if result.params.get("explode"):
        raise RuntimeError("deliberate renderer failure")
    counts = result.arrays["counts"]
    bars = "".join(
        f'<rect x="{10 + 22 * i}" y="{110 - 10 * c}" width="20" height="{10 * c}" fill="teal"/>'
        for i, c in enumerate(counts.tolist())
    )
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="240" height="120">{bars}</svg>'
    return [Figure("external histogram", f"{int(counts.sum())} counts from {result.models[0]}", svg=svg)]
'''


def store(cat: Catalog, run: str, model: str, params: dict, counts: list[int]) -> None:
    cat.record_result(
        stored_result(
            run,
            cache_key=f"ext-{model}",
            probe="ext_histo",
            probe_version="2.0.0",
            params=params,
            models=[(model, "fp-" + model)],
            datasets=[("digits_test", "fp-d")],
            warnings=["a stored warning"],
            duration_s=0.01,
            metrics=[("total", float(sum(counts)), None, None)],
            arrays={"counts": np.array(counts)},
        )
    )


@pytest.mark.slow  # a fresh process finds the plugin on PYTHONPATH
def test_a_third_party_plugin_draws_its_figures_and_a_raising_renderer_only_loses_its_own(
    mini_catalog, tmp_path
):
    cat_path = tmp_path / "catalog.duckdb"
    shutil.copy(catalog_of(mini_catalog), cat_path)
    cat = Catalog(cat_path)
    run = cat.start_run({})
    store(cat, run, "mlp_a", {}, [1, 2, 5, 3])
    store(cat, run, "mlp_b", {"explode": True}, [4, 1])
    cat.finish_run(run, "ok", 2, 0, 0)
    site = install_plugin(tmp_path / "site", "audit_ext_histo", PLUGIN, "2.0.0", "ext_histo")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "r.html"
    r = run_audit("report", "--catalog", str(cat_path), "--out", str(out), env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert "<b>external histogram</b>" in html and "11 counts from mlp_a" in html
    assert "An external probe that stores a histogram" in html and "a stored warning" in html
    assert "figure failed: plugin &#x27;ext_histo&#x27;: RuntimeError: deliberate renderer failure" in html
    assert "warning: figure failed:" in r.stderr and "deliberate renderer failure" in r.stderr
    assert "<b>layer×layer CKA</b>" in html  # the other probes' figures are all still there
    svg = [s for s in images(html) if s.startswith("data:image/svg+xml")]
    assert len(svg) == 1 and b"<rect" in base64.b64decode(svg[0].split(",", 1)[1])
    # without the plugin (this process never loads it) the section is still there, with its metrics and no figure
    r = audit_cli(
        "report", "--catalog", str(cat_path), "--probe", "ext_histo", "--out", str(out), cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert "(probe not installed here)" in html and "<img" not in html and ">total<" in html


# ---------------------------------------------------------------- selection


def test_the_latest_result_of_each_job_and_a_newer_failure_are_selected(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    run = cat.start_run({})

    def put(model: str, status: str, key: str) -> None:
        cat.record_result(
            stored_result(
                run,
                cache_key=key,
                models=[(model, model)],
                datasets=[("d", "d")],
                status=status,
                error=None if status == "ok" else "boom",
                metrics=[("x", 1.0, None, None)] if status == "ok" else [],
            ),
            force=True,
        )

    put("a", "ok", "1")
    put("a", "ok", "2")  # supersedes the first
    put("b", "ok", "3")
    put("b", "error", "4")  # the latest attempt failed: shown beside the last good result
    put("c", "error", "5")  # never succeeded
    chosen = select_results(cat).results
    _, ids = cat.query("select result_id, cache_key from results")
    key = {rid: k for rid, k in ids}
    assert sorted(key[v.result_id] for v in chosen) == ["2", "3", "4", "5"]
    put("b", "ok", "6")  # success again: the old failure is history
    assert sorted(key.get(v.result_id, "6") for v in select_results(cat).results) == ["2", "5", "6"]


# ---------------------------------------------------------------- headless Chromium


class DevTools:
    """The Chrome DevTools protocol over --remote-debugging-pipe (fd 3: commands in, fd 4: replies out),
    NUL-separated JSON: no port, no websocket client, nothing to install."""

    def __init__(self, profile: Path):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # the browser expects the pipes at fds 3 and 4 (dup2 clears close-on-exec)
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=fds,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _messages(self, deadline: float):
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                yield json.loads(raw)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.from_browser], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buffer += chunk

    def wait_for(self, predicate, timeout: float = 60.0) -> dict:
        for message in self._messages(time.monotonic() + timeout):
            if predicate(message):
                return message
            self.events.append(message)
        raise TimeoutError("no reply from chromium")

    def drain(self, seconds: float) -> None:
        for message in self._messages(time.monotonic() + seconds):
            self.events.append(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m, i=self.next_id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)
        finally:
            os.close(self.to_browser)
            os.close(self.from_browser)


def console_errors(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            errors.append(str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    return errors


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium_with_no_console_error_and_every_image_drawn(report):
    out, html, _ = report
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(Path(profile))
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Page"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Page.navigate", {"url": out.resolve().as_uri()}, session=session)
            browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired")
            found = browser.call(
                "Runtime.evaluate",
                {
                    "expression": "JSON.stringify(Array.from(document.images).map("
                    "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]))",
                    "returnByValue": True,
                },
                session=session,
            )
            title = browser.call(
                "Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, session=session
            )
            browser.drain(0.5)  # late console messages, if any
        finally:
            browser.close()
    assert title["result"]["value"] == "model-audit report"
    drawn = json.loads(found["result"]["value"])
    assert len(drawn) == len(images(html)) >= 8
    empty = [alt for alt, complete, w, h in drawn if not (complete and w > 0 and h > 0)]
    assert empty == []
    assert console_errors(browser.events) == []
