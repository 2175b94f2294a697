"""Datasets (.npz, .npy, .pt, .parquet, factory) and models (safetensors, state dict, TorchScript, pickle)."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from audit.api.errors import UsageError
from audit.config import DatasetSpec, ModelSpec, load_config
from audit.registry import installed_probes
from audit.run.sources import ArrayData, ParquetData, load_dataset, load_model, model_fingerprint

CPU = torch.device("cpu")
JIT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
_ids = itertools.count()
TAG = f"_t{os.getpid()}"


@pytest.fixture(autouse=True)
def _restore_import_state():
    """Factories are imported from the config's folder: undo the sys.path entry and the imported modules."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [m for m in sys.modules if TAG + "_" in m]:
        del sys.modules[name]


def unique(prefix: str) -> str:
    """A module name no other test uses (imports are cached by name)."""
    return f"{prefix}{TAG}_{next(_ids)}"


def config(folder: Path, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "audit.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, installed_probes())


def dataset(folder: Path, text: str, name: str = "d"):
    cfg = config(folder, text)
    return load_dataset(cfg.datasets[name], cfg.root)


def model(folder: Path, text: str, name: str = "m") -> torch.nn.Module:
    cfg = config(folder, text)
    return load_model(cfg.models[name], cfg.root, CPU)


def drain(data, batch_size: int):
    batches = list(data.batches(batch_size, CPU))
    xs = [x for x, _ in batches]
    ys = [y for _, y in batches]
    return batches, xs, ys


def check_batches(data, batch_size: int, x: np.ndarray, y: np.ndarray | None):
    """Batch count and sizes, concatenation equal to the source, dtypes (float32 inputs, targets as given)."""
    n = len(x)
    assert data.n == n
    batches, xs, ys = drain(data, batch_size)
    assert len(batches) == -(-n // batch_size)
    sizes = [b.shape[0] for b in xs]
    assert sizes[:-1] == [batch_size] * (len(sizes) - 1)
    assert sizes[-1] == n - batch_size * (len(sizes) - 1)
    assert sizes[-1] < batch_size  # the tests choose sizes whose last batch is short
    assert all(b.dtype == torch.float32 and b.device == CPU for b in xs)
    assert torch.equal(torch.cat(xs), torch.from_numpy(np.asarray(x, dtype=np.float32)))
    if y is None:
        assert all(t is None for t in ys)
    else:
        got = torch.cat(ys)
        assert got.dtype == torch.from_numpy(np.asarray(y)).dtype
        assert torch.equal(got, torch.from_numpy(np.asarray(y)))
    return ys


# ---------------------------------------------------------------- datasets: file formats


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))  # float64 on disk, float32 in batches
    y = rng.integers(0, 4, size=10).astype(np.int64)
    r = rng.normal(size=(10, 2))
    return x, y, r


def test_npz_named_arrays(tmp_path, arrays):
    x, y, _ = arrays
    np.savez(tmp_path / "d.npz", feats=x, labels=y)
    data = dataset(tmp_path, '[datasets.d]\npath = "d.npz"\ninputs = "feats"\ntargets = "labels"\n')
    assert isinstance(data, ArrayData)
    assert data.name == "d"
    ys = check_batches(data, 4, x, y)
    assert all(t.dtype == torch.int64 for t in ys)
    assert data.task == "classification"


def test_npz_default_names_and_no_targets(tmp_path, arrays):
    x, y, _ = arrays
    np.savez(tmp_path / "d.npz", inputs=x, targets=y)
    data = dataset(tmp_path, '[datasets.d]\npath = "d.npz"\n')
    check_batches(data, 3, x, None)  # targets are only used when named
    assert data.targets is None
    assert data.task is None


def test_npz_float_targets_mean_regression(tmp_path, arrays):
    x, _, r = arrays
    np.savez(tmp_path / "d.npz", inputs=x, targets=r)
    data = dataset(tmp_path, '[datasets.d]\npath = "d.npz"\ntargets = "targets"\n')
    assert data.task == "regression"
    check_batches(data, 4, x, r)


@pytest.mark.parametrize(
    ("targets", "task", "expected"),
    [
        ("y", "regression", "regression"),
        ("r", "classification", "classification"),
        (None, "regression", "regression"),
    ],
)
def test_explicit_task_wins(tmp_path, arrays, targets, task, expected):
    x, y, r = arrays
    np.savez(tmp_path / "d.npz", inputs=x, y=y, r=r)
    line = f'targets = "{targets}"\n' if targets else ""
    data = dataset(tmp_path, f'[datasets.d]\npath = "d.npz"\n{line}task = "{task}"\n')
    assert data.task == expected


def test_int32_targets_arrive_as_int64(tmp_path, arrays):
    x, y, _ = arrays
    np.savez(tmp_path / "d.npz", inputs=x, targets=y.astype(np.int32))
    data = dataset(tmp_path, '[datasets.d]\npath = "d.npz"\ntargets = "targets"\n')
    assert data.task == "classification"
    _, _, ys = drain(data, 4)
    assert all(t.dtype == torch.int64 for t in ys)


def test_npy_is_memory_mapped_inputs_only(tmp_path, arrays):
    x, _, _ = arrays
    x32 = x.astype(np.float32)
    np.save(tmp_path / "x.npy", x32)
    data = dataset(tmp_path, '[datasets.d]\npath = "x.npy"\n')
    assert isinstance(data.inputs, np.memmap)
    assert data.targets is None and data.task is None
    check_batches(data, 4, x32, None)


def test_npy_float64_becomes_float32(tmp_path, arrays):
    x, _, _ = arrays
    np.save(tmp_path / "x.npy", x)
    data = dataset(tmp_path, '[datasets.d]\npath = "x.npy"\ninputs = "pixels"\n')
    assert isinstance(data.inputs, np.memmap)
    assert data.inputs.dtype == np.float64
    check_batches(data, 7, x, None)


def test_pt_dict_of_tensors(tmp_path, arrays):
    x, y, _ = arrays
    torch.save({"inputs": torch.from_numpy(x), "labels": torch.from_numpy(y)}, tmp_path / "d.pt")
    data = dataset(tmp_path, '[datasets.d]\npath = "d.pt"\ntargets = "labels"\n')
    assert isinstance(data.inputs, torch.Tensor)
    ys = check_batches(data, 4, x, y)
    assert all(t.dtype == torch.int64 for t in ys)
    assert data.task == "classification"


def test_pt_float_tensor_targets_mean_regression(tmp_path, arrays):
    x, _, r = arrays
    torch.save({"inputs": torch.from_numpy(x), "targets": torch.from_numpy(r)}, tmp_path / "d.pt")
    data = dataset(tmp_path, '[datasets.d]\npath = "d.pt"\ntargets = "targets"\n')
    assert data.task == "regression"


PARQUET_SQL = """
    COPY (
        select (i / 4)::DOUBLE as a, (i * i)::DOUBLE as b, [i::DOUBLE, -i::DOUBLE, 0.5] as v,
               i % 3 as y, (i / 10)::DOUBLE as r
        from range(50) t(i) order by i
    ) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 16)
"""


def parquet_source(n: int = 50):
    i = np.arange(n, dtype=np.float64)
    return {
        "a": i / 4,
        "b": i * i,
        "v": np.stack([i, -i, np.full(n, 0.5)], axis=1),
        "y": (np.arange(n) % 3).astype(np.int64),
        "r": i / 10,
    }


@pytest.fixture
def parquet_file(tmp_path) -> Path:
    path = tmp_path / "d.parquet"
    with duckdb.connect() as con:
        con.execute(PARQUET_SQL.format(path=path))
    return path


def test_parquet_scalar_columns(tmp_path, parquet_file):
    src = parquet_source()
    data = dataset(tmp_path, '[datasets.d]\npath = "d.parquet"\ninputs = ["a", "b"]\ntargets = "y"\n')
    assert isinstance(data, ParquetData)
    assert data.n == 50
    assert data.task == "classification"
    ys = check_batches(data, 16, np.column_stack([src["a"], src["b"]]), src["y"])
    assert all(t.dtype == torch.int64 for t in ys)


def test_parquet_list_column_and_float_target(tmp_path, parquet_file):
    src = parquet_source()
    data = dataset(tmp_path, '[datasets.d]\npath = "d.parquet"\ninputs = "v"\ntargets = "r"\n')
    assert data.task == "regression"
    check_batches(data, 16, src["v"], src["r"])


def test_parquet_scalar_and_list_columns_side_by_side(tmp_path, parquet_file):
    src = parquet_source()
    data = dataset(tmp_path, '[datasets.d]\npath = "d.parquet"\ninputs = ["a", "v"]\n')
    assert data.task is None
    check_batches(data, 12, np.column_stack([src["a"], src["v"]]), None)


def test_parquet_missing_column(tmp_path, parquet_file):
    with pytest.raises(UsageError) as info:
        dataset(tmp_path, '[datasets.d]\npath = "d.parquet"\ninputs = ["a", "zz"]\ntargets = "y"\n')
    assert str(info.value) == "dataset 'd': no column 'zz' in d.parquet (columns: a, b, v, y, r)"


def _shares_memory(batch: torch.Tensor, source) -> bool:
    if isinstance(source, torch.Tensor):
        start, size = source.data_ptr(), source.nbytes
    else:
        start, size = source.ctypes.data, source.nbytes
    return start <= batch.data_ptr() < start + size


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".parquet"])
def test_batches_do_not_alias_the_dataset(tmp_path, parquet_file, suffix):
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    if suffix == ".npy":
        np.save(tmp_path / "d.npy", x)
    elif suffix == ".npz":
        np.savez(tmp_path / "d.npz", inputs=x)
    elif suffix == ".pt":
        torch.save({"inputs": torch.from_numpy(x)}, tmp_path / "d.pt")
    else:
        x = np.column_stack([parquet_source()["a"], parquet_source()["b"]]).astype(np.float32)
    inputs = '["a", "b"]' if suffix == ".parquet" else '"inputs"'
    data = dataset(tmp_path, f'[datasets.d]\npath = "d{suffix}"\ninputs = {inputs}\n')
    first, _ = next(iter(data.batches(4, CPU)))
    if suffix != ".parquet":
        # checked without writing: a write into the read-only .npy memory map would kill the process
        assert not _shares_memory(first, data.inputs)
    if suffix == ".npy":
        return
    first.mul_(0)  # what `x /= 255` or an inplace activation on the input does inside a forward
    again, _ = next(iter(data.batches(4, CPU)))
    assert torch.equal(again, torch.from_numpy(x[:4]))


def test_factory_dataset_beside_the_config(tmp_path, arrays):
    mod = unique("make_data")
    (tmp_path / f"{mod}.py").write_text(
        textwrap.dedent("""
        import numpy as np

        def make(n=10, shift=0.0):
            rng = np.random.default_rng(0)
            return {"x": rng.normal(size=(n, 3)) + shift, "y": np.arange(n, dtype=np.int64) % 4}
    """)
    )
    text = f'[datasets.d]\nfactory = "{mod}:make"\nkwargs = {{ n = 9 }}\ninputs = "x"\ntargets = "y"\n'
    data = dataset(tmp_path, text)
    expected = np.random.default_rng(0).normal(size=(9, 3))
    ys = check_batches(data, 4, expected, np.arange(9, dtype=np.int64) % 4)
    assert all(t.dtype == torch.int64 for t in ys)
    assert data.task == "classification"
    # the fingerprint hashes the produced arrays: new kwargs, new fingerprint; same kwargs, same fingerprint
    assert dataset(tmp_path, text).fingerprint == data.fingerprint
    shifted = dataset(tmp_path, text.replace("n = 9", "n = 9, shift = 1.0"))
    assert shifted.fingerprint != data.fingerprint


def test_factory_dataset_returning_a_pair_of_tensors(tmp_path):
    mod = unique("pair_data")
    (tmp_path / f"{mod}.py").write_text(
        textwrap.dedent("""
        import torch

        def make():
            return torch.arange(14, dtype=torch.float64).reshape(7, 2), torch.linspace(0, 1, 7)
    """)
    )
    data = dataset(tmp_path, f'[datasets.d]\nfactory = "{mod}:make"\ntargets = "targets"\n')
    assert data.task == "regression"
    check_batches(data, 5, np.arange(14, dtype=np.float64).reshape(7, 2), torch.linspace(0, 1, 7).numpy())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "def make():\n    raise RuntimeError('no data today')\n",
            "factory {mod}:make failed: no data today",
        ),
        (
            "def make():\n    return 'text'\n",
            "expected named arrays (a dict), an (inputs, targets) pair or one array",
        ),
        ("make = 3\n", "module '{mod}' has no callable 'make'"),
        ("import not_a_module_anywhere\n", "cannot import module '{mod}' for factory '{mod}:make'"),
    ],
)
def test_factory_dataset_errors(tmp_path, body, message):
    mod = unique("bad_data")
    (tmp_path / f"{mod}.py").write_text(body)
    with pytest.raises(UsageError) as info:
        dataset(tmp_path, f'[datasets.d]\nfactory = "{mod}:make"\n')
    assert str(info.value).startswith("dataset 'd': ")
    assert message.format(mod=mod) in str(info.value)


# ---------------------------------------------------------------- datasets: fingerprints


def _write_npz(path: Path, x, y):
    np.savez(path, inputs=x, targets=y)


def _write_npy(path: Path, x, y):
    np.save(path, x)


def _write_pt(path: Path, x, y):
    torch.save({"inputs": torch.from_numpy(x), "targets": torch.from_numpy(y)}, path)


@pytest.mark.parametrize(
    ("suffix", "writer"), [(".npz", _write_npz), (".npy", _write_npy), (".pt", _write_pt)]
)
def test_fingerprint_follows_content_not_path(tmp_path, arrays, suffix, writer):
    x, y, _ = arrays
    changed = x.copy()
    changed[2, 1] = 99.0
    fps = []
    for folder, values in (("one", x), ("two", x.copy()), ("three", changed)):
        (tmp_path / folder).mkdir()
        writer(tmp_path / folder / f"d{suffix}", values, y)
        data = dataset(tmp_path / folder, f'[datasets.d]\npath = "d{suffix}"\n')
        fps.append(data.fingerprint)
    # a copy under another name and folder
    (tmp_path / "four").mkdir()
    shutil.copy(tmp_path / "one" / f"d{suffix}", tmp_path / "four" / f"renamed{suffix}")
    fps.append(dataset(tmp_path / "four", f'[datasets.d]\npath = "renamed{suffix}"\n').fingerprint)
    one, two, other, renamed = fps
    assert len(one) == 64
    assert one == two == renamed
    assert other != one


def test_parquet_fingerprint(tmp_path, parquet_file):
    text = '[datasets.d]\npath = "{}"\ninputs = ["a"]\n'
    base = dataset(tmp_path, text.format("d.parquet")).fingerprint
    (tmp_path / "other").mkdir()
    shutil.copy(parquet_file, tmp_path / "other" / "copy.parquet")
    assert dataset(tmp_path / "other", text.format("copy.parquet")).fingerprint == base
    with duckdb.connect() as con:
        sql = PARQUET_SQL.replace(
            "(i / 4)::DOUBLE as a", "(case when i = 7 then 99 else i / 4 end)::DOUBLE as a"
        )
        con.execute(sql.format(path=tmp_path / "other" / "changed.parquet"))
    assert dataset(tmp_path / "other", text.format("changed.parquet")).fingerprint != base


def test_fingerprint_depends_on_which_arrays_are_used(tmp_path, arrays):
    x, y, r = arrays
    np.savez(tmp_path / "d.npz", raw=x, scaled=x * 2, y=y, r=r)
    a = dataset(tmp_path, '[datasets.d]\npath = "d.npz"\ninputs = "raw"\ntargets = "y"\n')
    b = dataset(tmp_path, '[datasets.d]\npath = "d.npz"\ninputs = "scaled"\ntargets = "y"\n')
    assert not torch.equal(next(iter(a.batches(10, CPU)))[0], next(iter(b.batches(10, CPU)))[0])
    assert a.fingerprint != b.fingerprint


# ---------------------------------------------------------------- datasets: errors


def test_missing_inputs_array_lists_found_names(tmp_path, arrays):
    x, y, _ = arrays
    np.savez(tmp_path / "d.npz", feats=x, labels=y)
    with pytest.raises(UsageError) as info:
        dataset(tmp_path, '[datasets.d]\npath = "d.npz"\n')
    assert str(info.value) == (
        "dataset 'd': no array named 'inputs' for inputs (found: feats, labels); set inputs = '...'"
    )


def test_missing_targets_array_lists_found_names(tmp_path, arrays):
    x, y, _ = arrays
    torch.save({"inputs": torch.from_numpy(x), "labels": torch.from_numpy(y)}, tmp_path / "d.pt")
    with pytest.raises(UsageError) as info:
        dataset(tmp_path, '[datasets.d]\npath = "d.pt"\ntargets = "targets"\n')
    assert str(info.value) == "dataset 'd': no array named 'targets' for targets (found: inputs, labels)"


def test_inputs_and_targets_of_different_length(tmp_path, arrays):
    x, y, _ = arrays
    np.savez(tmp_path / "d.npz", inputs=x, targets=y[:9])
    with pytest.raises(UsageError) as info:
        dataset(tmp_path, '[datasets.d]\npath = "d.npz"\ntargets = "targets"\n')
    assert str(info.value) == "dataset 'd': inputs have 10 rows but targets have 9"


def test_column_list_only_for_parquet(tmp_path, arrays):
    x, y, _ = arrays
    np.savez(tmp_path / "d.npz", inputs=x, targets=y)
    with pytest.raises(UsageError, match=r"a list of input columns only applies to \.parquet files"):
        dataset(tmp_path, '[datasets.d]\npath = "d.npz"\ninputs = ["inputs"]\n')


def test_empty_inputs(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((0, 3)))
    with pytest.raises(UsageError, match="dataset 'd': inputs are empty"):
        dataset(tmp_path, '[datasets.d]\npath = "d.npz"\n')


def test_unreadable_file(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(UsageError, match=r"^dataset 'd': cannot read d.npz: "):
        dataset(tmp_path, '[datasets.d]\npath = "d.npz"\n')


class RunsCode:
    """Unpickling this creates a directory: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_object_arrays_are_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = np.array([RunsCode(marker), None], dtype=object)
    np.save(tmp_path / "x.npy", payload, allow_pickle=True)
    np.savez(tmp_path / "d.npz", inputs=payload)
    with pytest.raises(UsageError, match=r"^dataset 'd': cannot read x.npy: "):
        dataset(tmp_path, '[datasets.d]\npath = "x.npy"\n')
    with pytest.raises(UsageError, match=r"^dataset 'd': cannot read d.npz: .*allow_pickle=False"):
        dataset(tmp_path, '[datasets.d]\npath = "d.npz"\n')
    assert not marker.exists()


def test_pt_dataset_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"inputs": torch.zeros(4, 2), "payload": RunsCode(marker)}, tmp_path / "d.pt")
    with pytest.raises(UsageError, match=r"^dataset 'd': cannot read d.pt: Weights only load failed"):
        dataset(tmp_path, '[datasets.d]\npath = "d.pt"\n')
    assert not marker.exists()


# ---------------------------------------------------------------- models

FACTORY = """
import torch


def build(hidden=5, out=2):
    torch.manual_seed(1234)  # a different initialisation from the test's reference module
    return torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out))


def not_a_module():
    return {"weight": torch.zeros(1)}
"""


def reference(hidden: int = 5, out: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out)
    ).eval()


@pytest.fixture
def factory(tmp_path) -> str:
    mod = unique("nets")
    (tmp_path / f"{mod}.py").write_text(FACTORY)
    return f"{mod}:build"


X = torch.linspace(-2, 2, 24).reshape(8, 3)


def assert_same_outputs(loaded: torch.nn.Module, original: torch.nn.Module):
    assert isinstance(loaded, torch.nn.Module)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(X), original(X))


def test_factory_with_safetensors_weights(tmp_path, factory):
    original = reference()
    save_file(original.state_dict(), tmp_path / "w.safetensors")
    loaded = model(tmp_path, f'[models.m]\nfactory = "{factory}"\nweights = "w.safetensors"\n')
    assert_same_outputs(loaded, original)


def test_factory_with_pt_state_dict(tmp_path, factory):
    original = reference(hidden=7)
    torch.save(original.state_dict(), tmp_path / "w.pt")
    loaded = model(
        tmp_path, f'[models.m]\nfactory = "{factory}"\nkwargs = {{ hidden = 7 }}\nweights = "w.pt"\n'
    )
    assert loaded[0].out_features == 7
    assert_same_outputs(loaded, original)


def test_factory_with_a_checkpoint_wrapping_the_state_dict(tmp_path, factory):
    original = reference()
    torch.save({"state_dict": original.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "ckpt.pth")
    loaded = model(tmp_path, f'[models.m]\nfactory = "{factory}"\nweights = "ckpt.pth"\n')
    assert_same_outputs(loaded, original)


def test_factory_without_weights_calls_the_factory(tmp_path, factory):
    loaded = model(tmp_path, f'[models.m]\nfactory = "{factory}"\nkwargs = {{ out = 4 }}\n')
    assert loaded(X).shape == (8, 4)
    assert not loaded.training


@JIT_DEPRECATED
def test_torchscript(tmp_path):
    original = reference()
    torch.jit.script(original).save(str(tmp_path / "m.ts"))
    loaded = model(tmp_path, '[models.m]\ntorchscript = "m.ts"\n')
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert_same_outputs(loaded, original)


def test_pickled_module_with_trust(tmp_path):
    original = reference()
    torch.save(original, tmp_path / "m.pt")
    loaded = model(tmp_path, '[models.m]\npickle = "m.pt"\ntrust = true\n')
    assert isinstance(loaded, torch.nn.Sequential)
    assert_same_outputs(loaded, original)


def test_weights_that_do_not_fit(tmp_path, factory):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "w.pt")
    with pytest.raises(UsageError) as info:
        model(tmp_path, f'[models.m]\nfactory = "{factory}"\nweights = "w.pt"\n')
    assert str(info.value).startswith(
        f"model 'm': weights w.pt do not fit the module built by {factory} "
        "(missing: 0.bias, 0.weight, 2.bias and 1 more; unexpected: bias, weight"
    )


def test_weights_with_one_missing_key(tmp_path, factory):
    state = reference().state_dict()
    del state["2.bias"]
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match=r"do not fit .* \(missing: 2\.bias; unexpected: none\b"):
        model(tmp_path, f'[models.m]\nfactory = "{factory}"\nweights = "w.safetensors"\n')


def test_weights_with_wrong_shapes(tmp_path, factory):
    save_file(reference(hidden=9).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(UsageError) as info:
        model(tmp_path, f'[models.m]\nfactory = "{factory}"\nweights = "w.safetensors"\n')
    message = str(info.value)
    assert message.startswith(f"model 'm': weights w.safetensors do not fit the module built by {factory} ")
    assert "0.weight" in message and "2.weight" in message


def test_pt_weights_with_a_pickled_object_are_refused_without_running_it(tmp_path, factory):
    marker = tmp_path / "pwned"
    torch.save({"0.weight": torch.zeros(5, 3), "payload": RunsCode(marker)}, tmp_path / "w.pt")
    with pytest.raises(UsageError) as info:
        model(tmp_path, f'[models.m]\nfactory = "{factory}"\nweights = "w.pt"\n')
    assert str(info.value).startswith("model 'm': cannot read weights w.pt: Weights only load failed")
    assert not marker.exists()
    # control: the payload is live, unpickling it without weights_only does run it
    torch.load(tmp_path / "w.pt", weights_only=False)
    assert marker.is_dir()


def test_pt_weights_without_tensors(tmp_path, factory):
    torch.save({"lr": 0.1, "epochs": 3}, tmp_path / "w.pt")
    with pytest.raises(UsageError, match=r"^model 'm': w.pt is not a state dict of tensors$"):
        model(tmp_path, f'[models.m]\nfactory = "{factory}"\nweights = "w.pt"\n')


def test_factory_must_build_a_module(tmp_path, factory):
    with pytest.raises(UsageError, match=r"^model 'm': expected a torch.nn.Module, got dict$"):
        model(tmp_path, f'[models.m]\nfactory = "{factory.replace(":build", ":not_a_module")}"\n')


def test_factory_failure(tmp_path, factory):
    with pytest.raises(
        UsageError, match=r"^model 'm': factory .*:build failed: .*unexpected keyword argument 'wide'"
    ):
        model(tmp_path, f'[models.m]\nfactory = "{factory}"\nkwargs = {{ wide = true }}\n')


@JIT_DEPRECATED
def test_broken_torchscript(tmp_path):
    (tmp_path / "m.ts").write_bytes(b"not torchscript")
    with pytest.raises(UsageError, match=r"^model 'm': cannot load TorchScript m.ts: "):
        model(tmp_path, '[models.m]\ntorchscript = "m.ts"\n')


# ---------------------------------------------------------------- models: fingerprints


def test_model_fingerprint(tmp_path, factory):
    original = reference()
    save_file(original.state_dict(), tmp_path / "w.safetensors")
    spec = ModelSpec("m", factory=factory, kwargs={"hidden": 5}, weights=tmp_path / "w.safetensors")
    base = model_fingerprint(spec)
    assert len(base) == 64
    assert model_fingerprint(spec) == base

    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tmp_path / "w.safetensors", tmp_path / "elsewhere" / "copy.safetensors")
    moved = ModelSpec(
        "other", factory=factory, kwargs={"hidden": 5}, weights=tmp_path / "elsewhere" / "copy.safetensors"
    )
    assert model_fingerprint(moved) == base  # content, not path (nor name)

    state = original.state_dict()
    state["2.bias"][1] += 1e-3
    save_file(state, tmp_path / "changed.safetensors")
    changed = ModelSpec("m", factory=factory, kwargs={"hidden": 5}, weights=tmp_path / "changed.safetensors")
    assert model_fingerprint(changed) != base

    assert (
        model_fingerprint(ModelSpec("m", factory=factory, kwargs={"hidden": 6}, weights=spec.weights)) != base
    )
    assert model_fingerprint(ModelSpec("m", factory=factory, kwargs={}, weights=spec.weights)) != base
    assert (
        model_fingerprint(ModelSpec("m", factory=factory + "2", kwargs={"hidden": 5}, weights=spec.weights))
        != base
    )


@JIT_DEPRECATED
def test_model_fingerprint_of_torchscript_and_pickle(tmp_path):
    original = reference()
    torch.jit.script(original).save(str(tmp_path / "m.ts"))
    torch.save(original, tmp_path / "m.pt")
    ts = model_fingerprint(ModelSpec("m", torchscript=tmp_path / "m.ts"))
    pk = model_fingerprint(ModelSpec("m", pickle=tmp_path / "m.pt"))
    assert ts != pk
    with torch.no_grad():
        original[0].weight[0, 0] += 1.0
    torch.jit.script(original).save(str(tmp_path / "m.ts"))
    assert model_fingerprint(ModelSpec("m", torchscript=tmp_path / "m.ts")) != ts


def test_dataset_spec_defaults():
    spec = DatasetSpec("d", path=Path("x.npz"))
    assert (spec.inputs, spec.targets, spec.task, spec.kwargs) == ("inputs", None, None, {})
