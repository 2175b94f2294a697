"""`audit show RESULT`: a stored result in the terminal — metrics, parameters, and the CKA matrix as a coloured grid."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from audit.api.terminal import colour, matrix_grid
from audit.catalog.store import Catalog
from audit.registry import installed_probes
from conftest import audit_cli


def cka_result(project) -> tuple[str, str]:
    """(result id, the ID dataset) of the demo's single-model ID/OOD cka job."""
    _, rows = Catalog(project / ".audit" / "catalog.duckdb").query(
        "select result_id, datasets[1] from results where probe = 'cka' and len(models) = 1 and status = 'ok' "
        "order by created_at desc limit 1"
    )
    return rows[0]


def test_show_prints_the_metrics_and_the_cka_grid(demo_catalog):
    rid, id_data = cka_result(demo_catalog)
    r = audit_cli("show", rid[:8], cwd=demo_catalog)  # a unique prefix is enough
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert rid in text and f"cka {installed_probes()['cka'].version}" in text
    for word in ("metrics", "offdiag_mean", "accuracy", "batch_size", "parameters"):
        assert word in text, word
    assert f"CKA of mlp_a on {id_data}" in text and "CKA of mlp_a on digits_rotated" in text
    grid = text[text.index(f"CKA of mlp_a on {id_data}") :]
    assert "output [7]" in grid  # layer names too long for a column head: numbered columns
    assert grid.count("1.00") >= 8  # the diagonal of an 8-layer CKA matrix


def test_show_of_a_cross_model_and_a_trimmed_ks_result(demo_catalog):
    _, rows = Catalog(demo_catalog / ".audit" / "catalog.duckdb").query(
        "select probe, result_id from results where status = 'ok' "
        "and (probe = 'trimmed_ks' or (probe = 'cka' and len(models) = 2))"
    )
    assert sorted(p for p, _ in rows) == ["cka", "trimmed_ks"]
    for probe, rid in rows:
        r = audit_cli("show", rid, cwd=demo_catalog)
        assert r.returncode == 0, r.stderr
        if probe == "cka":
            assert "CKA mlp_a (rows) × mlp_b (columns)" in r.stdout
        else:
            assert "alpha_hat" in r.stdout and "cand_long" in r.stdout and "warning:" in r.stdout


def test_unknown_or_ambiguous_result_is_one_line_and_exit_2(mini_catalog):
    r = audit_cli("show", "zzzz", cwd=mini_catalog)
    assert r.returncode == 2 and "no result with id 'zzzz'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = audit_cli("show", "x", "--catalog", "/nonexistent/c.duckdb")
    assert r.returncode == 2 and "no catalog at" in r.stderr


def test_matrix_grid_colours_each_cell_by_value():
    assert colour(0.0) == (68, 1, 84) and colour(1.0) == (253, 231, 37)  # viridis ends
    assert colour(float("nan")) is None and colour(2.0) == colour(1.0)  # clipped
    m = np.array([[1.0, 0.25], [np.nan, 1.0]])
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="truecolor", width=80)
    console.print(matrix_grid(m, ["a", "b"], title="grid"))
    out = buf.getvalue()
    assert "48;2;253;231;37" in out  # background of the 1.0 cells
    assert "0.25" in out and "nan" in out and "grid" in out
    # too wide for the terminal: colour cells without numbers
    wide = np.linspace(0, 1, 60 * 60).reshape(60, 60)
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="truecolor", width=200).print(
        matrix_grid(wide, [f"l{i}" for i in range(60)], width=200)
    )
    assert "0.50" not in buf.getvalue() and "48;2;" in buf.getvalue()
