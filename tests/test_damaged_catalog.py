"""A truncated catalog: every command that reads it exits 2 with one line naming the file, and leaves
nothing partial behind (DuckDB opens such a file and fails on the first read of a lost block)."""

from __future__ import annotations

import os

import pytest

from conftest import audit_cli, copy_project


@pytest.fixture
def truncated(mini_catalog, tmp_path):
    project = copy_project(mini_catalog, tmp_path / "project", catalog=True)
    path = project / ".audit" / "catalog.duckdb"
    with open(path, "r+b") as f:  # DuckDB's header blocks (12 KiB) survive; every data block is lost
        f.truncate(16 * 1024)
    return project


@pytest.mark.parametrize(
    "args",
    [
        ["gate"],
        ["show", "0"],
        ["run", "--executor", "inline"],
        ["report", "--out", "r.html"],
        ["query", "select * from metrics"],
        ["catalog", "export", "ex"],
    ],
    ids=lambda a: a[0] if a[0] != "catalog" else "export",
)
def test_every_command_on_a_truncated_catalog_is_one_line_exit_2(truncated, args):
    before = sorted(os.listdir(truncated))
    ran = audit_cli(*args, cwd=truncated)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "catalog.duckdb" in lines[0], ran.stderr
    assert "Traceback" not in ran.stderr
    assert sorted(os.listdir(truncated)) == before  # no partial export folder, no report file
