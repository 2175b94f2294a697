"""Comparing with history: accepted baselines, what a gate's ``against`` names, and git commits.

The question CI asks of a pull request is "is this checkpoint worse than what main accepted?". A gate can
compare each latest value with the value of the same probe entry (parameters' fingerprint), metric, model
and dataset in a set of earlier results, its *baseline*, named by ``against``:

- ``accepted:NAME``: the latest acceptance under NAME (``audit accept --as NAME``; table ``accepted``,
  append-only: re-accepting adds a newer set and keeps the older ones);
- ``run:ID`` (or a bare run id prefix): the results that run used, computed or reused;
- ``git:REF``: the results of the latest finished run recorded at the commit ``git rev-parse REF`` names in
  the config's folder (a hex prefix of a recorded commit works where git cannot resolve REF).

Resolving a baseline never raises: a name, run or commit the catalog has nothing for is a Baseline with a
``problem``, which the gates report as "missing" verdicts (a CI gate must not pass because main's catalog
was not restored). Only the syntax of ``against`` is an error (at config load, or on the command line).

This module imports no DuckDB, NumPy or torch: the config validates ``against`` with it, and the runner and
``audit accept`` read git commits through it; the connections come from the caller.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.api.errors import UsageError

if TYPE_CHECKING:
    from audit.catalog.store import Catalog

KINDS = ("accepted", "run", "git")
# a baseline's name: "main", "release/1.2", "pr-17"; no spaces or colons (it follows "accepted:")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_RUN_ID = re.compile(r"[0-9a-f]{4,32}")  # run ids are 16 hex digits; a prefix of 4 or more names one
_HEX = re.compile(r"[0-9a-fA-F]{4,40}")
_SYNTAX = "expected 'accepted:NAME', 'git:REF', 'run:ID' or a run id prefix (4+ hex digits)"


@dataclass(frozen=True)
class Against:
    """What a gate compares with: ``kind`` is "accepted", "run" or "git"; ``ref`` the name, id or git ref."""

    kind: str
    ref: str

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.ref}"


def parse_against(text: str) -> Against:
    """``against`` → Against, or ValueError saying what was expected (the caller adds the file and key)."""
    value = text.strip()
    kind, sep, ref = value.partition(":")
    if not sep:
        if _RUN_ID.fullmatch(value):
            return Against("run", value)
        hint = f" (did you mean 'accepted:{value}'?)" if NAME.fullmatch(value) else ""
        raise ValueError(f"{_SYNTAX}, got {text!r}{hint}")
    if kind not in KINDS:
        raise ValueError(f"{_SYNTAX}, got {text!r} (unknown kind {kind!r})")
    if kind == "accepted" and not NAME.fullmatch(ref):
        raise ValueError(
            f"expected 'accepted:NAME' with a name of letters, digits, '.', '_', '/', '-', got {text!r}"
        )
    if kind == "run" and not _RUN_ID.fullmatch(ref):
        raise ValueError(f"expected 'run:ID' with a run id or a prefix of 4+ hex digits, got {text!r}")
    if kind == "git" and (not ref or any(c.isspace() for c in ref) or ref.startswith("-")):
        raise ValueError(
            f"expected 'git:REF' with a commit, branch or tag (e.g. git:origin/main), got {text!r}"
        )
    return Against(kind, ref)


@dataclass(frozen=True)
class Change:
    """A bound on the change from the baseline value: ``amount`` absolute, or percent of |baseline| when
    ``relative`` (written "5%" in audit.toml, so that the file says which it is)."""

    amount: float
    relative: bool = False

    @property
    def text(self) -> str:
        return f"{self.amount:g}%" if self.relative else f"{self.amount:g}"

    def allowed(self, baseline: float) -> float:
        return self.amount / 100 * abs(baseline) if self.relative else self.amount


def parse_change(value: Any) -> Change:
    """A number (absolute) or a string "N%" (relative): ValueError saying what was expected otherwise."""
    expected = 'expected a number >= 0 (absolute) or a percentage such as "5%" (relative to |baseline|)'
    if isinstance(value, bool):
        raise ValueError(f"{expected}, got {value!r}")
    if isinstance(value, int | float):
        amount, relative = float(value), False
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            amount, relative = float(value.strip()[:-1]), True
        except ValueError:
            raise ValueError(f"{expected}, got {value!r}") from None
    else:
        raise ValueError(f"{expected}, got {value!r}")
    if not amount >= 0 or amount == float("inf"):  # NaN compares false: it would pass every change
        raise ValueError(f"{expected}, got {value!r}")
    return Change(amount, relative)


# ------------------------------------------------------------------ git


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git ARGS`` in ``root``, or None where git is missing, fails, or ``root`` is no repository."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def head_commit(root: Path) -> str | None:
    """The commit checked out in ``root`` (``git rev-parse HEAD``), or None outside a git repository or
    before its first commit. What ``runs.git_commit`` and ``accepted.git_commit`` record."""
    return _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")


def resolve_commit(root: Path, ref: str) -> str | None:
    """The full commit id git resolves REF to in ``root`` (a branch, tag, HEAD~1, a short id), or None."""
    return _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


# ------------------------------------------------------------------ baselines


@dataclass(frozen=True)
class Baseline:
    """The results an ``against`` resolved to, and a description for verdicts (what, when, at which commit).
    With a ``problem`` (nothing found) ``result_ids`` is empty and every comparison is "missing"."""

    against: Against | None
    result_ids: tuple[str, ...] = ()
    description: str = ""
    problem: str | None = None


def run_result_ids(con: Any, run_id: str) -> list[str]:
    """The successful results a run used: those it computed and those it reused from earlier runs.

    A result belongs to the run that computed it (``results.run_id``); a run that reused it says so in
    ``run_reuses`` (schema 4 on). Runs recorded before schema 4 list only what they computed.
    """
    rows = con.execute(
        "select result_id from results where status = 'ok' and ("
        "run_id = ? or result_id in (select result_id from run_reuses where run_id = ?)) "
        "order by probe, created_at",
        [run_id, run_id],
    ).fetchall()
    return [r[0] for r in rows]


def _when(at: Any) -> str:
    """A stored time in UTC (DuckDB hands timestamptz back in the session's time zone)."""
    if not isinstance(at, datetime):
        return str(at)
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y-%m-%d %H:%M UTC")


def _commit(commit: str | None) -> str:
    return f"commit {commit[:12]}" if commit else "no git commit"


def _describe_run(con: Any, run_id: str) -> tuple[str, str | None]:
    """'run ID of DATE, commit C', and the run's status (None when the run is unknown)."""
    row = con.execute(
        "select started_at, git_commit, status from run_summary where run_id = ?", [run_id]
    ).fetchone()
    if row is None:
        return f"run {run_id}", None
    return f"run {run_id} of {_when(row[0])}, {_commit(row[1])}", row[2]


def resolve(con: Any, against: Against, root: Path | None = None) -> Baseline:
    """The results ``against`` names in the catalog open on ``con`` (git refs resolve in ``root``)."""
    if against.kind == "accepted":
        return _resolve_accepted(con, against)
    if against.kind == "run":
        found = [
            r[0]
            for r in con.execute(
                "select run_id from runs where starts_with(run_id, ?) order by run_id limit 6", [against.ref]
            ).fetchall()
        ]
        if not found:
            return Baseline(against, problem=f"no run with id {against.ref!r} in the catalog")
        if len(found) > 1 and against.ref not in found:
            return Baseline(
                against,
                problem=f"run id prefix {against.ref!r} is ambiguous ({', '.join(found[:5])}); give more digits",
            )
        return _of_run(con, against, against.ref if against.ref in found else found[0], "")
    return _resolve_git(con, against, root or Path.cwd())


def _of_run(con: Any, against: Against, run_id: str, via: str) -> Baseline:
    ids = run_result_ids(con, run_id)
    described, _ = _describe_run(con, run_id)
    text = f"{against.text} ({via}{described}; {len(ids)} result(s))"
    if not ids:
        return Baseline(against, (), text, f"{against.text}: {described} has no successful result")
    return Baseline(against, tuple(ids), text)


def _resolve_accepted(con: Any, against: Against) -> Baseline:
    latest = con.execute(
        "select acceptance_id, accepted_at, git_commit, run_id, count(*) from accepted where name = ? "
        "group by all order by accepted_at desc, acceptance_id desc limit 1",
        [against.ref],
    ).fetchone()
    if latest is None:
        names = [r[0] for r in con.execute("select distinct name from accepted order by 1").fetchall()]
        known = f"accepted names: {', '.join(names)}" if names else "none accepted yet"
        return Baseline(
            against,
            problem=(
                f"no acceptance named {against.ref!r} in the catalog ({known}); record one with "
                f"`audit accept --as {against.ref}` (on main, after `audit run`)"
            ),
        )
    acceptance_id, at, commit, run_id, n = latest
    ids = [
        r[0]
        for r in con.execute(
            "select a.result_id from accepted a join results r using (result_id) where a.acceptance_id = ?",
            [acceptance_id],
        ).fetchall()
    ]
    of_run = f", run {run_id}" if run_id else ""
    text = f"{against.text} (accepted {_when(at)}, {_commit(commit)}{of_run}; {len(ids)} result(s))"
    if not ids:
        return Baseline(against, (), text, f"{text}: none of its {n} result(s) is in this catalog")
    return Baseline(against, tuple(ids), text)


def _resolve_git(con: Any, against: Against, root: Path) -> Baseline:
    commit = resolve_commit(root, against.ref)
    if commit is not None:
        commits, how = [commit], f"{against.ref} = {commit[:12]}"
    elif _HEX.fullmatch(against.ref):  # not resolvable here (no repository, a shallow clone): a recorded one
        commits = [
            r[0]
            for r in con.execute(
                "select distinct git_commit from runs where starts_with(git_commit, ?) order by 1",
                [against.ref.lower()],
            ).fetchall()
        ]
        if len(commits) > 1:
            return Baseline(
                against,
                problem=f"commit prefix {against.ref!r} matches {len(commits)} recorded commits; give more digits",
            )
        how = f"recorded commit {commits[0][:12]}" if commits else ""
    else:
        return Baseline(
            against,
            problem=(
                f"git cannot resolve {against.ref!r} in {root} (not a repository, an unknown ref, or a shallow "
                "clone: fetch it, e.g. actions/checkout with fetch-depth: 0)"
            ),
        )
    row = None
    if commits:
        row = con.execute(
            "select run_id from run_summary where git_commit = ? and status in ('ok', 'failed') "
            "order by started_at desc limit 1",
            [commits[0]],
        ).fetchone()
    if row is None:
        at = commits[0][:12] if commits else against.ref
        return Baseline(
            against, problem=f"no finished run recorded at commit {at} ({against.text}) in the catalog"
        )
    return _of_run(con, against, row[0], f"{how}: ")


# ------------------------------------------------------------------ audit accept


@dataclass(frozen=True)
class Acceptance:
    """What `audit accept` recorded, and what the user should know about it (``warnings``)."""

    name: str
    acceptance_id: str
    result_ids: tuple[str, ...]
    run_id: str | None
    git_commit: str | None
    described: str
    warnings: tuple[str, ...] = ()


def accept(
    catalog: Catalog,
    name: str,
    *,
    run: str | None = None,
    models: tuple[str, ...] = (),
    root: Path,
    note: str | None = None,
) -> Acceptance:
    """Record the chosen successful results as the newest acceptance named ``name``.

    ``run`` (an id or unique prefix): the results that run used (computed or reused); ``models`` (names or
    fnmatch patterns) narrow them to results involving one of the models. Without ``run``: with ``models``
    the latest successful result of each job (probe entry × models × datasets) involving them, else the
    results of the latest finished run. Nothing earlier is changed: the newest acceptance of a name wins.
    """
    import fnmatch

    if not NAME.fullmatch(name):
        raise UsageError(
            f"--as: expected a name of letters, digits, '.', '_', '/', '-' (e.g. main), got {name!r}"
        )
    warnings: list[str] = []
    run_id = catalog.resolve_id("run", run) if run is not None else None
    with catalog.reader() as con:
        if run_id is None and not models:
            row = con.execute(
                "select run_id from run_summary where status in ('ok', 'failed') order by started_at desc limit 1"
            ).fetchone()
            if row is None:
                raise UsageError(
                    f"no finished run in catalog {catalog.path} (run `audit run` first, or pass --run)"
                )
            run_id = row[0]
        if run_id is not None:
            ids = run_result_ids(con, run_id)
            described, status = _describe_run(con, run_id)
            warnings += _run_warnings(con, run_id, status, len(ids))
        else:
            ids = [
                r[0]
                for r in con.execute(
                    "select result_id from results where status = 'ok' qualify row_number() over ("
                    "partition by probe, params_fingerprint, models, datasets order by created_at desc) = 1 "
                    "order by probe, created_at"
                ).fetchall()
            ]
            described = "the latest result of each job"
        if models:
            found = dict(
                con.execute(
                    "select result_id, models from results where list_contains(?, result_id)", [ids]
                ).fetchall()
            )
            for pattern in models:
                if not any(fnmatch.fnmatchcase(m, pattern) for rid in ids for m in found.get(rid) or ()):
                    where = f"run {run_id}" if run_id else "the latest results"
                    raise UsageError(f"--model: no successful result of {where} has model {pattern!r}")
            ids = [
                rid
                for rid in ids
                if any(fnmatch.fnmatchcase(m, p) for p in models for m in found.get(rid) or ())
            ]
            described += f" with model {', '.join(models)}"
    if not ids:
        raise UsageError(f"nothing to accept: {described} has no successful result")
    commit = head_commit(root)
    acceptance_id = catalog.record_acceptance(name, ids, run_id, commit, note)
    return Acceptance(name, acceptance_id, tuple(ids), run_id, commit, described, tuple(warnings))


def _run_warnings(con: Any, run_id: str, status: str | None, n: int) -> list[str]:
    """What an acceptance of this run will lack: failed jobs, an unfinished run, reuse not recorded."""
    row = con.execute("select failed, reused from run_summary where run_id = ?", [run_id]).fetchone()
    failed, reused = row if row else (None, None)
    out = []
    if status == "interrupted":
        out.append(f"run {run_id} never finished: only the results it stored are accepted")
    if failed:
        out.append(f"run {run_id} had {failed} failed job(s): their gates will find no accepted value")
    recorded = con.execute("select count(*) from run_reuses where run_id = ?", [run_id]).fetchone()[0]
    if reused and recorded < reused:
        out.append(
            f"run {run_id} reused {reused} result(s) of earlier runs but was recorded before model-audit "
            f"recorded reuse: {n} result(s) it computed are accepted; run `audit run` again and accept that run, "
            "or accept with --model"
        )
    return out
