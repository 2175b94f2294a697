"""Regression gates against history (issue 18): `audit accept`, gates with `against` and max_increase /
max_decrease, `audit gate --against`, the `run_reuses` and `accepted` tables (migration 4), and their export.

Most tests write catalog rows by hand (exact values, no model runs); the CI flow and the runner's reuse
records run the mini project through the real CLI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

import audit.catalog.store
from audit import gates, history
from audit.api.errors import ConfigError, UsageError
from audit.catalog.exchange import export_catalog, import_catalog
from audit.catalog.migrations import MIGRATIONS
from audit.catalog.store import Catalog
from audit.config import GateSpec, load_config
from audit.history import Change, parse_against, parse_change
from audit.registry import installed_probes
from conftest import audit_cli, stored_result

VERSION = next(i for i, (name, _) in enumerate(MIGRATIONS, start=1) if name == "reuse and accepted baselines")
README = Path(__file__).resolve().parents[1] / "README.md"
WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "ci" / "audit.yml"


def put(cat: Catalog, run: str, model: str, value: float, key: str, dataset: str = "id", metric: str = "acc"):
    """A successful cka result of one model on one dataset with one metric; returns its id."""
    rid, written = cat.record_result(
        stored_result(
            run,
            cache_key=key,
            probe="cka",
            models=[(model, f"fp-{model}-{key}")],
            datasets=[(dataset, dataset)],
            metrics=[(metric, value, None, None)],
        )
    )
    assert written
    return rid


def history_gate(against: str | None = "accepted:main", **kw) -> GateSpec:
    return GateSpec(index=0, probe="cka", metric="acc", dataset="id", against=against, **kw)


@pytest.fixture
def main_then_pr(tmp_path):
    """Main's run (a 0.90, b 0.80) accepted as 'main'; then a pull request's run that recomputed a (0.88) and b
    (0.85) — the latest values — while c was never accepted."""
    cat = Catalog(tmp_path / "c.duckdb")
    main = cat.start_run({})
    put(cat, main, "a", 0.90, "a1")
    put(cat, main, "b", 0.80, "b1")
    cat.finish_run(main, "ok", 2, 0, 0)
    history.accept(cat, "main", root=tmp_path)
    pr = cat.start_run({})
    put(cat, pr, "a", 0.88, "a2")
    put(cat, pr, "b", 0.85, "b2")
    put(cat, pr, "c", 0.70, "c2")
    cat.finish_run(pr, "ok", 3, 0, 0)
    return cat


def by_model(verdicts):
    return {v.model: v for v in verdicts}


# ---------------------------------------------------------------- syntax


def test_against_and_change_bounds_parse_or_say_what_was_expected():
    assert parse_against("accepted:main") == history.Against("accepted", "main")
    assert parse_against("accepted:release/1.2").text == "accepted:release/1.2"
    assert parse_against("git:origin/main").text == "git:origin/main"
    assert parse_against("run:3f2a9c").text == "run:3f2a9c"
    assert parse_against("3f2a9c0d").text == "run:3f2a9c0d"  # a bare run id prefix
    for bad, why in (
        ("main", "did you mean 'accepted:main'"),
        ("accepted:", "accepted:NAME"),
        ("accepted:a b", "accepted:NAME"),
        ("branch:main", "unknown kind 'branch'"),
        ("run:xyz", "run:ID"),
        ("git:", "git:REF"),
        ("git:--all", "git:REF"),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_against(bad)
    assert parse_change(0.02) == Change(0.02) and parse_change(1) == Change(1.0)
    assert parse_change("5%") == Change(5.0, relative=True) and parse_change(" 2.5 % ") == Change(2.5, True)
    assert Change(5.0, True).allowed(-0.8) == pytest.approx(0.04)  # of |baseline|
    for bad in (-0.1, "-1%", "abc%", "5", True, float("nan"), float("inf"), [1]):
        with pytest.raises(ValueError, match="expected a number >= 0"):
            parse_change(bad)


# ---------------------------------------------------------------- verdicts


def test_unchanged_values_pass_and_a_worse_one_fails_past_max_decrease_absolute_and_relative(main_then_pr):
    cat = main_then_pr
    tight = by_model(gates.evaluate([history_gate(max_decrease=Change(0.01), model="[ab]")], cat))
    assert tight["a"].status == "fail" and tight["b"].status == "pass"  # b went up: no decrease at all
    assert tight["a"].value == pytest.approx(0.88) and tight["a"].baseline_value == pytest.approx(0.90)
    assert tight["a"].delta == pytest.approx(-0.02) and tight["a"].observed == pytest.approx(0.88)
    assert tight["a"].reason.startswith("0.88 vs 0.9 in accepted:main: Δ -0.02 (-2.22%), a decrease beyond")
    assert tight["a"].reason.endswith("max_decrease 0.01")
    loose = gates.evaluate([history_gate(max_decrease=Change(0.05), model="a")], cat)
    assert [v.status for v in loose] == ["pass"] and "within decrease <= 0.05" in loose[0].reason
    # relative: 2% of 0.90 is 0.018 < 0.02 lost; 3% is 0.027
    assert gates.evaluate([history_gate(max_decrease=Change(2, True), model="a")], cat)[0].status == "fail"
    assert gates.evaluate([history_gate(max_decrease=Change(3, True), model="a")], cat)[0].status == "pass"
    # b rose by 0.05 (6.25%)
    assert gates.evaluate([history_gate(max_increase=Change(0.01), model="b")], cat)[0].status == "fail"
    assert gates.evaluate([history_gate(max_increase=Change(7, True), model="b")], cat)[0].status == "pass"
    # min/max still apply to the value itself
    both = gates.evaluate([history_gate(min=0.89, max_decrease=Change(0.05), model="a")], cat)[0]
    assert both.status == "fail" and both.reason.startswith("0.88 < min 0.89")


def test_the_same_run_accepted_then_gated_passes_with_a_zero_delta(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    run = cat.start_run({})
    put(cat, run, "a", 0.9, "a1")
    cat.finish_run(run, "ok", 1, 0, 0)
    history.accept(cat, "main", root=tmp_path)
    (v,) = gates.evaluate([history_gate(max_decrease=Change(0.0))], cat)
    assert v.status == "pass" and v.delta == pytest.approx(0.0, abs=1e-12) and "Δ +0" in v.reason


def test_a_missing_baseline_is_a_missing_verdict_never_a_pass(main_then_pr, tmp_path):
    cat = main_then_pr
    g = history_gate(max_decrease=Change(0.05))
    c = by_model(gates.evaluate([g], cat))["c"]  # c was never accepted
    assert c.status == "missing" and c.value == pytest.approx(0.70) and c.baseline_value is None
    assert c.reason.startswith("no value of cka.acc for model 'c' on id in accepted:main (accepted ")
    nothing = gates.evaluate([history_gate("accepted:release", max_decrease=Change(0.05))], cat)
    assert {v.status for v in nothing} == {"missing"} and gates.exit_code(nothing) == 1
    assert "no acceptance named 'release' in the catalog (accepted names: main)" in nothing[0].reason
    assert "audit accept --as release" in nothing[0].reason
    unknown_run = gates.evaluate([history_gate("run:ffff", max_decrease=Change(0.05))], cat)
    assert unknown_run[0].status == "missing" and "no run with id 'ffff'" in unknown_run[0].reason
    no_against = gates.evaluate([history_gate(None, max_decrease=Change(0.05), model="a")], cat)  # built in code
    assert no_against[0].status == "missing" and "need a baseline" in no_against[0].reason
    # the catalog main saved was not restored: an empty one
    empty = Catalog(tmp_path / "empty.duckdb")
    put(empty, empty.start_run({}), "a", 0.9, "a1")
    (v,) = gates.evaluate([history_gate(max_decrease=Change(0.05), model="a")], empty)
    assert v.status == "missing" and "none accepted yet" in v.reason


def test_a_run_id_names_the_results_that_run_used_computed_or_reused(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    first = cat.start_run({})
    a1 = put(cat, first, "a", 0.90, "a1")
    b1 = put(cat, first, "b", 0.80, "b1")
    cat.finish_run(first, "ok", 2, 0, 0)
    second = cat.start_run({})  # recomputes a changed checkpoint of a, reuses b
    cat.record_reuses(second, [b1])
    a2 = put(cat, second, "a", 0.70, "a2")
    cat.finish_run(second, "ok", 1, 1, 0)
    assert cat.query("select result_id, how from run_results where run_id = ? order by how", [second])[1] == [
        (a2, "computed"),
        (b1, "reused"),
    ]
    done = history.accept(cat, "main", root=tmp_path)  # default: the latest finished run
    assert done.run_id == second and set(done.result_ids) == {a2, b1} and done.warnings == ()
    of_first = gates.evaluate([history_gate(f"run:{first[:8]}", max_decrease=Change(0.1))], cat)
    assert [(v.model, v.status) for v in of_first] == [("a", "fail"), ("b", "pass")]
    assert of_first[0].baseline_value == pytest.approx(0.90) and a1 not in done.result_ids
    assert f"run {first}" in of_first[0].compared_with


def test_accept_options_and_re_accepting_keeps_history(main_then_pr, tmp_path):
    cat = main_then_pr
    pr = cat.query("select run_id from run_summary order by started_at desc limit 1")[1][0][0]
    first = cat.query("select acceptance_id from accepted")[1][0][0]
    only_b = history.accept(cat, "main", run=pr[:6], models=("b",), root=tmp_path, note="b only")
    assert only_b.run_id == pr and len(only_b.result_ids) == 1
    # the newest acceptance of a name wins; the older rows stay
    assert cat.query("select count(distinct acceptance_id), count(*) from accepted")[1] == [(2, 3)]
    assert cat.query("select acceptance_id, models, note from latest_accepted")[1] == [
        (only_b.acceptance_id, ["b"], "b only")
    ]
    assert first != only_b.acceptance_id
    v = by_model(gates.evaluate([history_gate(max_decrease=Change(0.05))], cat))
    assert v["b"].status == "pass" and v["b"].delta == pytest.approx(0.0, abs=1e-12)  # compared with the newer acceptance
    assert v["a"].status == "missing"  # not in the newer set
    latest = history.accept(cat, "pr", models=("[ac]",), root=tmp_path)  # latest result of each job
    assert latest.run_id is None and len(latest.result_ids) == 2
    with pytest.raises(UsageError, match="no successful result of the latest results has model 'z'"):
        history.accept(cat, "pr", models=("z",), root=tmp_path)
    with pytest.raises(UsageError, match="--as: expected a name"):
        history.accept(cat, "no spaces", root=tmp_path)
    assert cat.query("select count(*) from accepted")[1] == [(5,)]  # refusals add nothing


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_git_ref_names_the_latest_finished_run_at_that_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert history.head_commit(repo) is None  # a repository without a commit has no HEAD
    assert history.head_commit(tmp_path) is None  # not a repository
    (repo / "audit.toml").write_text("seed = 0\n")
    _git(repo, "add", "audit.toml")
    _git(repo, "commit", "-q", "-m", "one")
    one = history.head_commit(repo)
    assert one is not None and len(one) == 40
    cat = Catalog(repo / "c.duckdb")
    for value in (0.5, 0.9):  # two runs at commit one: the later wins
        run = cat.start_run({"git_commit": one})
        put(cat, run, "a", value, f"a-{value}")
        cat.finish_run(run, "ok", 1, 0, 0)
    unfinished = cat.start_run({"git_commit": one})  # never finished: not a baseline
    put(cat, unfinished, "a", 0.1, "a-unfinished")
    (repo / "audit.toml").write_text("seed = 1\n")
    _git(repo, "commit", "-q", "-am", "two")
    two = history.head_commit(repo)
    run = cat.start_run({"git_commit": two})
    put(cat, run, "a", 0.8, "a-two")
    cat.finish_run(run, "ok", 1, 0, 0)

    def verdict(against: str, root: Path = repo):
        (v,) = gates.evaluate([history_gate(against, max_decrease=Change(0.05))], cat, root=root)
        return v

    previous = verdict("git:HEAD~1")
    assert previous.status == "fail" and previous.baseline_value == pytest.approx(0.9)
    assert f"HEAD~1 = {one[:12]}" in previous.compared_with
    assert verdict(f"git:{one[:7]}").baseline_value == pytest.approx(0.9)  # a short id, resolved by git
    assert verdict("git:HEAD").status == "pass" and verdict("git:HEAD").delta == pytest.approx(0.0, abs=1e-12)
    # where git cannot resolve it (no repository here), a hex prefix matches the recorded commits
    elsewhere = verdict(f"git:{one[:10]}", root=tmp_path)
    assert elsewhere.baseline_value == pytest.approx(0.9) and f"recorded commit {one[:12]}" in elsewhere.compared_with
    unknown = verdict("git:no-such-branch")
    assert unknown.status == "missing" and "git cannot resolve 'no-such-branch'" in unknown.reason
    assert "no finished run recorded at commit deadbeef" in verdict("git:deadbeef").reason
    _git(repo, "commit", "-q", "--allow-empty", "-m", "three")  # a commit nothing ran at
    assert "no finished run recorded at commit" in verdict("git:HEAD").reason


def test_markdown_and_junit_show_both_values_and_the_delta(main_then_pr):
    v = gates.evaluate(
        [history_gate(max_decrease=Change(0.01)), GateSpec(1, "cka", "acc", min=0.5, model="a", dataset="id")],
        main_then_pr,
    )
    md = gates.markdown(v)
    assert "| verdict | gate | model | dataset | observed | baseline | Δ | threshold | detail | context |" in md
    assert "| ❌ fail | `cka.acc` | a | id | 0.88 | 0.9 | -0.02 (-2.22%) | decrease <= 0.01 vs accepted:main |" in md
    assert "| ✅ pass | `cka.acc` | b | id | 0.85 | 0.8 | +0.05 (+6.25%) |" in md
    assert "| ⚠️ missing | `cka.acc` | c | id | 0.7 | — | — |" in md
    assert "| ✅ pass | `cka.acc` | a | id | 0.88 | — | — | >= 0.5 |" in md  # a plain gate beside them
    assert re.search(r"\nCompared with accepted:main \(accepted \d{4}-\d\d-\d\d \d\d:\d\d UTC, no git commit", md)
    suite = ET.fromstring(gates.junit_xml(v)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    failed = suite.find("testcase/failure")
    assert "Δ -0.02" in failed.get("message")
    assert "value 0.88 · baseline 0.9 · Δ -0.02 (-2.22%) · compared with accepted:main" in failed.text
    assert failed.text.endswith("required decrease <= 0.01 vs accepted:main")
    outs = [c.findtext("system-out") for c in suite.findall("testcase")]
    assert outs[1].startswith("value 0.85 · baseline 0.8 · Δ +0.05 (+6.25%)") and outs[3] is None
    plain = gates.markdown([x for x in v if not x.gate.compares_history])  # no history: the table as before
    assert "| verdict | gate | model | dataset | observed | threshold | detail | context |" in plain


# ---------------------------------------------------------------- configuration

GATE = '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmodel = "m"\n'


def _config(tmp_path: Path, gate_lines: str):
    (tmp_path / "models.py").write_text(
        "import numpy as np, torch\n"
        "def mlp():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n"
        "def data():\n    return {'x': np.zeros((8, 4), np.float32), 'y': np.zeros(8, np.int64)}\n"
    )
    path = tmp_path / "audit.toml"
    path.write_text(
        '[models.m]\nfactory = "models:mlp"\n[datasets.d]\nfactory = "models:data"\n' + GATE + gate_lines
    )
    return load_config(path, installed_probes())


def test_history_keys_in_audit_toml(tmp_path):
    cfg = _config(tmp_path, 'against = "accepted:main"\nmax_decrease = "2%"\nmax_increase = 0.5\nmin = 0.1\n')
    (g,) = cfg.gates
    assert g.against == "accepted:main" and g.max_decrease == Change(2.0, True) and g.max_increase == Change(0.5)
    assert g.label == "cka.accuracy >= 0.1 and increase <= 0.5 and decrease <= 2% vs accepted:main"
    bare = _config(tmp_path, 'against = "0123abcd"\nmax_decrease = 0\n').gates[0]
    assert bare.against == "run:0123abcd" and bare.max_decrease == Change(0.0)


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ('against = "accepted:main"\nmax_decrese = 0.1\n', "max_decrese", "unknown key (expected one of:"),
        ("max_decrease = 0.1\n", "max_decrease", "needs against = 'accepted:NAME'"),
        ('max_increase = "3%"\n', "max_increase", "needs against"),
        ('against = "accepted:main"\nmin = 0.5\n', "against", "needs max_increase and/or max_decrease"),
        ('against = "main"\nmax_decrease = 0.1\n', "against", "did you mean 'accepted:main'?"),
        ('against = "accepted:"\nmax_decrease = 0.1\n', "against", "expected 'accepted:NAME'"),
        ('against = "tag:v1"\nmax_decrease = 0.1\n', "against", "unknown kind 'tag'"),
        ("against = 3\nmax_decrease = 0.1\n", "against", "expected a string"),
        ('against = "accepted:main"\nmax_decrease = -0.1\n', "max_decrease", "expected a number >= 0"),
        ('against = "accepted:main"\nmax_decrease = "two%"\n', "max_decrease", "expected a number >= 0"),
        ('against = "accepted:main"\nmax_increase = true\n', "max_increase", "expected a number >= 0"),
        ('against = "accepted:main"\nmax_decrease = 0.1\nbaseline = "m"\n', "against", "not both"),
    ],
)
def test_history_config_errors_name_the_file_and_key(tmp_path, lines, key, message):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, lines)
    assert e.value.key == f"gates[0].{key}" and message in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 'audit.toml'}: gates[0].{key}: ")


def test_a_gate_without_any_bound_says_history_bounds_count_too(tmp_path):
    with pytest.raises(ConfigError, match=r"a gate needs min and/or max \(or max_increase/max_decrease with against\)"):
        _config(tmp_path, "")


# ---------------------------------------------------------------- the command line, end to end

HISTORY_GATES = """
[[gates]]
name = "accuracy no worse than main"
probe = "cka"
metric = "accuracy"
model = "mlp_*"
dataset = "digits_test"
against = "accepted:nothing-yet"
max_decrease = 0.05
"""


def _worsen(project: Path, model: str) -> None:
    """The pull request's checkpoint: the classifier's weights negated (a valid, much worse model)."""
    from safetensors.numpy import load_file, save_file

    path = project / "models" / f"{model}.safetensors"
    weights = load_file(str(path))
    last = max(int(k.split(".")[0]) for k in weights)
    for k in (f"{last}.weight", f"{last}.bias"):  # logits negated: the argmax becomes the argmin
        weights[k] = -weights[k]
    save_file(weights, str(path))


def test_the_ci_flow_accept_on_main_then_gate_a_pull_request(mini_project, tmp_path):
    """The workflow of examples/ci/audit.yml: main runs and accepts, its catalog is saved; a pull request
    restores it, runs its own checkpoint and gates against accepted:main."""
    config = mini_project / "audit.toml"
    config.write_text(config.read_text() + HISTORY_GATES)
    _git(mini_project, "init", "-q")
    _git(mini_project, "add", "-A")
    _git(mini_project, "commit", "-q", "-m", "main")
    head = history.head_commit(mini_project)
    assert audit_cli("run", "--executor", "inline", cwd=mini_project).returncode == 0
    accepted = audit_cli("accept", "--as", "main", "--note", "merged", cwd=mini_project)
    assert accepted.returncode == 0, accepted.stderr
    assert re.search(rf"accepted 2 result\(s\) as 'main': run \w+ of .*commit {head[:12]}", accepted.stdout)
    saved = tmp_path / "cache" / "catalog.duckdb"  # actions/cache/save
    saved.parent.mkdir()
    shutil.copy(mini_project / ".audit" / "catalog.duckdb", saved)
    cat = Catalog(saved)
    assert cat.query("select distinct git_commit, note from accepted")[1] == [(head, "merged")]
    assert cat.query("select distinct git_commit from runs")[1] == [(head,)]

    def pull_request(worse: bool) -> tuple[subprocess.CompletedProcess, str, ET.Element]:
        pr = tmp_path / ("worse" if worse else "same")
        shutil.copytree(mini_project, pr, ignore=shutil.ignore_patterns(".audit", ".git"))
        (pr / ".audit").mkdir()
        shutil.copy(saved, pr / ".audit" / "catalog.duckdb")  # actions/cache/restore
        if worse:
            _worsen(pr, "mlp_a")
        assert audit_cli("run", "--executor", "inline", cwd=pr).returncode == 0
        md, junit = pr / "summary.md", pr / "gate.xml"
        r = audit_cli(
            "gate", "--against", "accepted:main", "--markdown", str(md), "--junit", str(junit), cwd=pr
        )
        return r, md.read_text(), ET.parse(junit).getroot()

    same, md, junit = pull_request(worse=False)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "compared with accepted:main (accepted " in same.stdout and f"commit {head[:12]}, run " in same.stdout
    assert md.count("| +0 (+0%) | decrease <= 0.05 vs accepted:main |") == 2  # mlp_a and mlp_b, unchanged

    worse, md, junit = pull_request(worse=True)
    # the mini project's own min gate on mlp_a's accuracy fails too
    assert worse.returncode == 1 and worse.stderr.strip().splitlines()[-1] == "4 of 6 gate check(s) passed"
    row = next(
        line
        for line in md.splitlines()
        if line.startswith("| ❌ fail | `cka.accuracy` | mlp_a |") and "vs accepted:main |" in line
    )
    cells = [c.strip() for c in row.split("|")]
    now, base, delta = float(cells[5]), float(cells[6]), cells[7]
    assert now < base - 0.05 and delta.startswith("-")
    assert "a decrease beyond max_decrease 0.05" in row
    assert junit.find("testsuite").get("failures") == "2"


def test_gate_against_on_the_command_line(mini_project):
    config = mini_project / "audit.toml"
    config.write_text(config.read_text() + HISTORY_GATES)
    assert audit_cli("run", "--executor", "inline", cwd=mini_project).returncode == 0
    md = mini_project / "summary.md"
    as_configured = audit_cli("gate", "--markdown", str(md), cwd=mini_project)  # accepted:nothing-yet
    assert as_configured.returncode == 1 and md.read_text().count("no acceptance named 'nothing-yet'") == 2
    assert audit_cli("accept", "--as", "main", cwd=mini_project).returncode == 0
    overridden = audit_cli("gate", "--against", "accepted:main", "--markdown", str(md), cwd=mini_project)
    assert overridden.returncode == 0, overridden.stdout
    assert "nothing-yet" not in md.read_text() and md.read_text().count("vs accepted:main |") == 2
    run_id = Catalog(mini_project / ".audit" / "catalog.duckdb").query("select run_id from runs")[1][0][0]
    assert audit_cli("gate", "--against", run_id[:6], cwd=mini_project).returncode == 0
    for args, message in (
        (("--against", "main"), "--against: expected 'accepted:NAME'"),
        (("--against", "git:"), "--against: expected 'git:REF'"),
    ):
        bad = audit_cli("gate", *args, cwd=mini_project)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    config.write_text(config.read_text().replace(HISTORY_GATES, ""))  # no gate compares with history
    unused = audit_cli("gate", "--against", "accepted:main", cwd=mini_project)
    assert unused.returncode == 2 and "no gate of" in unused.stderr and "max_increase or max_decrease" in unused.stderr


def test_accept_on_the_command_line_refuses_what_it_cannot_accept(mini_project, tmp_path):
    missing = audit_cli("accept", "--as", "main", "--catalog", str(tmp_path / "none.duckdb"))
    assert missing.returncode == 2 and "no catalog at" in missing.stderr
    assert audit_cli("run", "--executor", "inline", cwd=mini_project).returncode == 0
    for args, message in (
        (("--as", "main", "--run", "zzzz"), "no run with id 'zzzz'"),
        (("--as", "main", "--model", "nope"), "--model: no successful result of the latest results has model"),
        (("--as", "main", "--run", "", "--model", "nope"), "no run with id ''"),
        (("--as", "a b"), "--as: expected a name"),
    ):
        r = audit_cli("accept", *args, cwd=mini_project)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert Catalog(mini_project / ".audit" / "catalog.duckdb").query("select count(*) from accepted")[1] == [(0,)]


def test_the_runner_records_what_a_run_reused(mini_project):
    """The latest run on main recomputes only the changed checkpoint; accepting it still takes every result."""
    assert audit_cli("run", "--executor", "inline", cwd=mini_project).returncode == 0
    _worsen(mini_project, "mlp_b")  # only the model × model job involves mlp_b
    assert audit_cli("run", "--executor", "inline", cwd=mini_project).returncode == 0
    cat = Catalog(mini_project / ".audit" / "catalog.duckdb")
    last = cat.query("select run_id, computed, reused from run_summary order by started_at desc limit 1")[1][0]
    assert last[1:] == (1, 1)
    assert cat.query("select how, count(*) from run_results where run_id = ? group by 1 order by 1", [last[0]])[
        1
    ] == [("computed", 1), ("reused", 1)]
    accepted = audit_cli("accept", "--as", "main", cwd=mini_project)
    assert accepted.returncode == 0 and "accepted 2 result(s)" in accepted.stdout


# ---------------------------------------------------------------- catalog: export, import, migration


def test_export_and_import_carry_acceptances_and_reuses(main_then_pr, tmp_path):
    src = main_then_pr
    pr = src.query("select run_id from run_summary order by started_at desc limit 1")[1][0][0]
    b1 = src.query("select result_id from results where cache_key = 'b1'")[1][0][0]
    src.record_reuses(pr, [b1])
    counts = export_catalog(src, tmp_path / "export")
    assert counts["accepted"] == 2 and counts["run_reuses"] == 1
    dst = Catalog(tmp_path / "dst.duckdb")
    report = import_catalog(dst, tmp_path / "export")
    assert report.added["accepted"] == 2 and report.added["run_reuses"] == 1
    for table in ("accepted", "run_reuses"):
        assert sorted(map(repr, dst.query(f"select * from {table}")[1])) == sorted(
            map(repr, src.query(f"select * from {table}")[1])
        )
    assert import_catalog(dst, tmp_path / "export").added["accepted"] == 0  # idempotent
    g = [history_gate(max_decrease=Change(0.01))]
    assert [(v.model, v.status) for v in gates.evaluate(g, dst)] == [
        (v.model, v.status) for v in gates.evaluate(g, src)
    ]
    # a run-filtered export carries the acceptances of the results it carries
    main_run = src.query("select run_id from run_summary order by started_at limit 1")[1][0][0]
    assert export_catalog(src, tmp_path / "main-only", run_ids=[main_run])["accepted"] == 2
    assert export_catalog(src, tmp_path / "pr-only", run_ids=[pr])["accepted"] == 0


def test_an_acceptance_of_a_duplicate_job_points_at_the_catalogs_result(tmp_path):
    """A worker computed the same job as the driver and accepted it: its result is skipped on import (one
    result per job), and its acceptance is kept, pointing at the driver's result of that job."""
    driver = Catalog(tmp_path / "driver.duckdb")
    kept = put(driver, driver.start_run({}), "a", 0.9, "job")
    worker = Catalog(tmp_path / "worker.duckdb")
    run = worker.start_run({})
    put(worker, run, "a", 0.9, "job")
    worker.finish_run(run, "ok", 1, 0, 0)
    history.accept(worker, "main", root=tmp_path)
    export_catalog(worker, tmp_path / "shard")
    report = import_catalog(driver, tmp_path / "shard")
    assert report.duplicate_jobs == 1 and report.added["accepted"] == 1
    assert driver.query("select result_id from accepted")[1] == [(kept,)]
    (v,) = gates.evaluate([history_gate(max_decrease=Change(0.0))], driver)
    assert v.status == "pass" and v.baseline_value == pytest.approx(0.9)


def test_an_older_catalog_upgrades_and_its_runs_can_be_accepted(tmp_path, monkeypatch):
    path = tmp_path / "c.duckdb"
    monkeypatch.setattr(audit.catalog.store, "MIGRATIONS", MIGRATIONS[: VERSION - 1])
    old = Catalog(path)
    first = old.start_run({})
    put(old, first, "a", 0.9, "a1")
    old.finish_run(first, "ok", 1, 0, 0)
    second = old.start_run({})  # reused a1 and computed b: the old schema could not say which it reused
    put(old, second, "b", 0.8, "b1")
    old.finish_run(second, "ok", 1, 1, 0)
    assert old.query("select max(version) from schema_migrations")[1] == [(VERSION - 1,)]
    assert "accepted" not in {r[0] for r in old.query("select table_name from duckdb_tables()")[1]}
    monkeypatch.undo()

    r = audit_cli("accept", "--as", "main", "--catalog", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"run {second} reused 1 result(s) of earlier runs but was recorded before" in " ".join(r.stderr.split())
    new = Catalog(path)
    assert new.query("select max(version) from schema_migrations")[1] == [(len(MIGRATIONS),)]
    assert new.query("select count(*), count(distinct acceptance_id) from accepted")[1] == [(1, 1)]
    assert new.query("select count(*) from results")[1] == [(2,)]  # nothing lost
    v = by_model(gates.evaluate([history_gate(max_decrease=Change(0.0))], new))
    assert v["b"].status == "pass" and v["a"].status == "missing"


# ---------------------------------------------------------------- the worked CI example


def test_the_readme_shows_the_example_workflow_verbatim_and_it_is_valid_yaml():
    yaml = pytest.importorskip("yaml")
    text = WORKFLOW.read_text()
    assert f"```yaml\n{text}```" in README.read_text()
    flow = yaml.safe_load(text)
    steps = [s.get("run", "") for job in flow["jobs"].values() for s in job["steps"]]
    joined = "\n".join(steps)
    assert "audit run" in joined and "audit accept --as main" in joined
    assert 'audit gate --against accepted:main --markdown "$GITHUB_STEP_SUMMARY" --junit gate.xml' in joined
    assert set(flow[True] if True in flow else flow["on"]) >= {"pull_request", "push"}  # YAML 1.1 reads on: as True


def test_history_module_needs_no_heavy_import():
    """The config validates `against` with audit.history, so reading it imports no DuckDB, NumPy or torch."""
    code = "import sys, audit.history; print(sorted(m for m in ('duckdb', 'numpy', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
