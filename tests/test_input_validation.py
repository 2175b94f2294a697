"""Inputs are checked when they load, before anything reaches the catalog: non-finite values (refused with
the array, the count and the first row, or dropped on request), unsupported dtypes, a factory that returns
something other than a module — each one line, exit 2."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from audit.api.errors import UsageError
from audit.config import DatasetSpec, ModelSpec
from audit.run.sources import load_dataset, load_model


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def _load(tmp_path, nonfinite=None, **arrays):
    spec = DatasetSpec("d", path=_npz(tmp_path, **arrays), inputs="x", targets="y" if "y" in arrays else None,
                       nonfinite=nonfinite)  # fmt: skip
    return load_dataset(spec, tmp_path)


def test_nan_inputs_are_refused_with_count_and_first_row(tmp_path):
    x = np.ones((10, 3), np.float32)
    x[[4, 7], 1] = np.nan
    x[8, 0] = np.inf
    message = r"dataset 'd': 3 of 10 rows hold NaN or infinite values \(first: row 4, in inputs 'x'\)"
    with pytest.raises(UsageError, match=message):
        _load(tmp_path, x=x, y=np.arange(10))


def test_nan_targets_are_named(tmp_path):
    y = np.linspace(0, 1, 6)
    y[5] = np.nan
    with pytest.raises(UsageError, match=r"1 of 6 rows .*first: row 5, in targets 'y'"):
        _load(tmp_path, x=np.ones((6, 2), np.float32), y=y)


def test_drop_leaves_the_nonfinite_rows_out_and_changes_the_fingerprint(tmp_path):
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    x[3, 1] = np.nan
    kept = _load(tmp_path, nonfinite="drop", x=x, y=np.arange(10))
    assert kept.n == 9
    np.testing.assert_array_equal(np.asarray(kept.targets), [0, 1, 2, 4, 5, 6, 7, 8, 9])
    clean = x.copy()
    clean[3, 1] = 0.0
    other = _load(tmp_path, x=clean, y=np.arange(10))
    assert other.n == 10 and other.fingerprint != kept.fingerprint


@pytest.mark.parametrize(
    ("x", "dtype"),
    [
        (np.array([["a", "b"], ["c", "d"]]), "str"),
        (np.ones((4, 2), bool), "bool"),
        (np.ones((4, 2), np.int8), "int8"),
        (np.ones((4, 2), np.complex64), "complex64"),
    ],
)
def test_unsupported_input_dtypes_are_refused_naming_the_expected_ones(tmp_path, x, dtype):
    message = rf"inputs 'x': expected floating point or int32/int64 token ids, got dtype {dtype}"
    with pytest.raises(UsageError, match=message):
        _load(tmp_path, x=x)


def test_token_ids_and_float16_inputs_are_accepted(tmp_path):
    assert _load(tmp_path, x=np.ones((4, 5), np.int64)).n == 4
    assert _load(tmp_path, x=np.ones((4, 5), np.float16)).n == 4


def test_a_factory_dataset_of_tensors_is_checked_the_same_way(tmp_path):
    (tmp_path / "mk.py").write_text(
        "import torch\ndef make():\n    x = torch.zeros(5, 2)\n    x[2, 0] = float('nan')\n    return x\n"
        "def bf():\n    return torch.ones(3, 2, dtype=torch.bfloat16)\n"
    )
    with pytest.raises(UsageError, match=r"1 of 5 rows .*first: row 2"):
        load_dataset(DatasetSpec("d", factory="mk:make"), tmp_path)
    assert load_dataset(DatasetSpec("d", factory="mk:bf"), tmp_path).n == 3


def test_parquet_nonfinite_and_dtype_checks(tmp_path):
    path = tmp_path / "d.parquet"
    with duckdb.connect() as con:
        con.execute(
            f"copy (select i::double as a, [i::double, case when i = 6 then 'nan'::double else 1 end] as v, "
            f"'s' || i as name from range(10) t(i)) to '{path}' (format parquet)"
        )
    with pytest.raises(UsageError, match=r"1 rows of d.parquet hold NaN or infinite values \(first: row 6\)"):
        load_dataset(DatasetSpec("d", path=path, inputs=["a", "v"]), tmp_path)
    with pytest.raises(UsageError, match=r"input column 'name': expected one of FLOAT, DOUBLE"):
        load_dataset(DatasetSpec("d", path=path, inputs=["a", "name"]), tmp_path)
    assert load_dataset(DatasetSpec("d", path=path, inputs=["a"]), tmp_path).n == 10


def test_a_factory_that_returns_no_module_is_refused(tmp_path):
    (tmp_path / "mods.py").write_text("def bad():\n    return {'weight': 1}\n")
    with pytest.raises(UsageError, match=r"model 'm': expected a torch.nn.Module, got dict"):
        load_model(ModelSpec("m", factory="mods:bad"), tmp_path, torch.device("cpu"))


def _project(tmp_path, weights_shape=(3, 4), nan=False):
    from safetensors.torch import save_file

    (tmp_path / "mods.py").write_text("import torch\ndef lin():\n    return torch.nn.Linear(4, 3)\n")
    save_file({"weight": torch.zeros(weights_shape), "bias": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    if nan:
        x[5, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(32) % 3)
    (tmp_path / "audit.toml").write_text(
        '[models.m]\nfactory = "mods:lin"\nweights = "w.safetensors"\n'
        '[datasets.d]\npath = "d.npz"\ninputs = "x"\ntargets = "y"\n'
        '[[probes]]\nprobe = "trimmed_ks"\nmodels = ["m", "m"]\n'
    )
    return tmp_path / "audit.toml"


@pytest.mark.parametrize("fault", ["weights", "nan"])
def test_a_load_error_is_the_first_line_and_writes_nothing(tmp_path, fault):
    from conftest import audit_cli

    config = _project(tmp_path, (3, 5) if fault == "weights" else (3, 4), nan=fault == "nan")
    ran = audit_cli("run", "--config", str(config), "--executor", "inline")
    assert ran.returncode == 2, ran.stdout + ran.stderr
    first = ran.stderr.strip().splitlines()[0]
    assert first.startswith("error:") and ("do not fit" in first if fault == "weights" else "NaN" in first)
    assert not (tmp_path / ".audit").exists()  # no catalog file, no run row, no model row
