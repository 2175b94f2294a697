"""Loading models and datasets from their specs, and their content fingerprints.

Nothing is unpickled unless the config says ``trust = true``: weights load through safetensors or
``torch.load(weights_only=True)``, Hugging Face directories from safetensors (see :mod:`audit.run.libraries`,
which also builds torchvision and timm models by name), arrays through ``np.load(allow_pickle=False)``.
Datasets are read batch by batch (``.npy`` memory-mapped, ``.parquet`` in chunks through DuckDB), so
memory follows the batch size, not the dataset size. Fingerprints hash content, not paths, so moving a
file keeps its cached results and changing a byte invalidates them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.api.capture import select_output
from audit.api.errors import UsageError
from audit.run import libraries
from audit.specs import DatasetSpec, ModelSpec

_CHUNK = 1 << 20


def sha256_file(path: Path, h: Any = None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def import_factory(ref: str, root: Path, what: str) -> Any:
    """Import ``module:function``; the config's folder is importable so projects keep factories beside it."""
    module_name, func_name = ref.split(":")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an import error inside user code is still the user's input error
        raise UsageError(f"{what}: cannot import module {module_name!r} for factory {ref!r}: {e}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(f"{what}: module {module_name!r} has no callable {func_name!r}")
    return func


# ---------------------------------------------------------------- models


def model_fingerprint(spec: ModelSpec) -> str:
    """What the model is built from and everything read to build it. Keys a spec leaves unset stay out,
    so the models of older configs keep their fingerprints (and their cached results)."""
    h = hashlib.sha256()
    described: dict[str, Any] = {"factory": spec.factory, "kwargs": spec.kwargs}
    for key in ("torchvision", "timm", "model_class", "output"):
        if getattr(spec, key) is not None:
            described[key] = getattr(spec, key)
    if spec.huggingface is not None:
        described["huggingface"] = "directory"  # its content, not its path, is hashed below
    h.update(json.dumps(described, sort_keys=True, default=str).encode())
    for p in (spec.weights, spec.torchscript, spec.pickle):
        if p is not None:
            h.update(p.suffix.encode())
            sha256_file(p, h)
    if spec.huggingface is not None:
        _hash_directory(spec.huggingface, h)
    return h.hexdigest()


def _hash_directory(directory: Path, h: Any) -> None:
    """Every file under a directory, by relative path and content: a changed config.json, a re-saved
    weight shard or an added file each make another model."""
    files = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*") if p.is_file()}
    for rel in sorted(files):
        h.update(f"{rel}\0{sha256_file(files[rel])}\n".encode())


def _state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{what}: cannot read weights {path.name}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{what}: {path.name} is not a state dict of tensors")
    return state


def load_model(spec: ModelSpec, root: Path, device: torch.device) -> torch.nn.Module:
    """The module a spec names, on `device`, in eval mode, its call narrowed to the output the probes see."""
    what = f"model {spec.name!r}"
    if spec.torchscript is not None:
        try:
            model = torch.jit.load(str(spec.torchscript), map_location=device)
        except Exception as e:
            raise UsageError(f"{what}: cannot load TorchScript {spec.torchscript.name}: {e}") from None
    elif spec.pickle is not None:  # only reachable with trust = true (checked in config)
        model = torch.load(spec.pickle, map_location=device, weights_only=False)
    elif spec.huggingface is not None:
        model = libraries.load_huggingface(spec, what)
    elif spec.torchvision is not None:
        model = libraries.build_torchvision(spec.torchvision, spec.kwargs, what)
    elif spec.timm is not None:
        model = libraries.build_timm(spec.timm, spec.kwargs, what)
    else:
        factory = import_factory(spec.factory or "", root, what)
        try:
            model = factory(**spec.kwargs)
        except Exception as e:
            raise UsageError(f"{what}: factory {spec.factory} failed: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{what}: expected a torch.nn.Module, got {type(model).__name__}")
    if spec.weights is not None:
        _load_weights(model, spec.weights, what, _builder(spec))
    return select_output(model.to(device).eval(), spec.output)


def _builder(spec: ModelSpec) -> str:
    """How the module that weights load into was built, in the words of the config."""
    if spec.torchvision is not None:
        return f"torchvision.models.get_model({spec.torchvision!r})"
    if spec.timm is not None:
        return f"timm.create_model({spec.timm!r})"
    return str(spec.factory)


def _load_weights(model: torch.nn.Module, path: Path, what: str, builder: str) -> None:
    """A state dict that fits the module exactly: a missing, unknown or reshaped key is an input error."""
    state = _state_dict(path, what)
    missing, unexpected, reshaped = _mismatch(model, state)
    if missing or unexpected or reshaped:
        raise UsageError(
            f"{what}: weights {path.name} do not fit the module built by {builder} "
            f"(missing: {_few(missing)}; unexpected: {_few(unexpected)}; other shape: {_few(reshaped)})"
        )
    model.load_state_dict(state)


def _mismatch(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Keys the module wants but the file lacks, keys it does not know, and keys whose shapes differ."""
    expected = model.state_dict()
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    return sorted(set(expected) - set(state)), sorted(set(state) - set(expected)), reshaped


def _few(keys: list[str]) -> str:
    return (
        "none" if not keys else ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    )


# ---------------------------------------------------------------- datasets


@dataclass
class ArrayData:
    """A dataset as (possibly memory-mapped) arrays, read batch by batch."""

    name: str
    inputs: Any  # np.ndarray (maybe memmap) or torch.Tensor, first axis = examples
    targets: Any | None
    fingerprint: str
    task: str | None

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    def batches(
        self, batch_size: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for start in range(0, self.n, batch_size):
            x = _to_tensor(self.inputs[start : start + batch_size])
            y = (
                None
                if self.targets is None
                else _to_tensor(self.targets[start : start + batch_size], inputs=False)
            )
            yield x.to(device), (None if y is None else y.to(device))


@dataclass
class ParquetData:
    """A Parquet dataset read in chunks through DuckDB (no pyarrow needed)."""

    name: str
    path: Path
    inputs: list[str]
    targets: str | None
    n: int
    fingerprint: str
    task: str | None

    def batches(
        self, batch_size: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        import duckdb

        cols = [*self.inputs, *([self.targets] if self.targets else [])]
        select = ", ".join(f'"{c}"' for c in cols)
        con = duckdb.connect()
        try:  # one scan, fetched a batch at a time: linear in the file, memory bounded by the batch
            result = con.execute(f"select {select} from read_parquet(?)", [str(self.path)])
            while rows := result.fetchmany(batch_size):
                columns = list(zip(*rows, strict=True))
                xs = [_column(columns[i]) for i in range(len(self.inputs))]
                x = xs[0] if len(xs) == 1 and xs[0].ndim > 1 else np.column_stack(xs)
                y = None if not self.targets else _column(columns[-1])
                yield (
                    _to_tensor(x).to(device),
                    (None if y is None else _to_tensor(y, inputs=False).to(device)),
                )
        finally:
            con.close()


def _column(values: Any) -> np.ndarray:
    """One column of fetched rows as an array; a list/array column becomes a 2-D array (one row each)."""
    values = list(values) if isinstance(values, tuple) else values
    arr = np.asarray(values) if not (len(values) and isinstance(values[0], (list, tuple))) else None
    if arr is None or arr.dtype == object:
        return np.stack([np.asarray(v) for v in values])
    return arr


def _to_tensor(values: Any, inputs: bool = True) -> torch.Tensor:
    """A fresh tensor (never a view of the dataset: a model that edits its input in place must not
    write into a memory map or into the data later jobs read); float inputs float32, integer targets int64."""
    t = values.clone() if isinstance(values, torch.Tensor) else torch.from_numpy(np.array(values, copy=True))
    if t.is_floating_point() and inputs:
        return t.float()
    if not inputs and not t.is_floating_point() and t.dtype != torch.bool:
        return t.long()
    return t


Dataset = ArrayData | ParquetData


def _selection_fingerprint(spec: DatasetSpec, content: str) -> str:
    """Content hash plus which arrays are used and how: `inputs = "raw"` and `inputs = "scaled"` of one file
    are different datasets to a probe, so they must not share cached results."""
    chosen: dict[str, Any] = {"inputs": spec.inputs, "targets": spec.targets, "task": spec.task}
    if spec.nonfinite is not None:  # only when set: datasets of older configs keep their fingerprints
        chosen["nonfinite"] = spec.nonfinite
    selection = json.dumps(chosen, sort_keys=True)
    return hashlib.sha256(f"{content}:{selection}".encode()).hexdigest()


def load_dataset(spec: DatasetSpec, root: Path) -> Dataset:
    what = f"dataset {spec.name!r}"
    if spec.factory is not None:
        factory = import_factory(spec.factory, root, what)
        try:
            produced = factory(**spec.kwargs)
        except Exception as e:
            raise UsageError(f"{what}: factory {spec.factory} failed: {e}") from None
        return dataset_from_arrays(spec, produced, what)
    path = spec.path
    assert path is not None
    fingerprint = _selection_fingerprint(spec, sha256_file(path))
    if path.suffix == ".parquet":
        return _parquet_data(spec, path, fingerprint, what)
    available: list[str] | None = None
    try:
        if path.suffix == ".npy":
            key = spec.inputs if isinstance(spec.inputs, str) else "inputs"
            arrays = {key: np.load(path, mmap_mode="r", allow_pickle=False)}  # a .npy holds inputs only
        elif path.suffix == ".npz":
            # members of a zip cannot be memory-mapped: only the ones used are read (whole); prefer .npy,
            # .pt or .parquet for data larger than memory
            with np.load(path, allow_pickle=False) as npz:
                wanted = {spec.inputs if isinstance(spec.inputs, str) else "", spec.targets or ""}
                arrays = {k: npz[k] for k in npz.files if k in wanted}
                available = list(npz.files)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            arrays = _named_arrays(loaded, what)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"{what}: cannot read {path.name}: {str(e).splitlines()[0]}") from None
    return _array_data(spec, arrays, fingerprint, what, available)


def dataset_from_arrays(spec: DatasetSpec, produced: Any, what: str) -> ArrayData:
    """A dataset from arrays in memory (a factory's, or the Python API's): named, fingerprinted by content
    and checked (dtypes, shapes, non-finite rows) like a file's."""
    arrays = _named_arrays(produced, what)
    return _array_data(spec, arrays, _selection_fingerprint(spec, _arrays_fingerprint(spec, arrays)), what)


def _named_arrays(produced: Any, what: str) -> dict[str, Any]:
    if isinstance(produced, tuple) and len(produced) == 2:
        produced = {"inputs": produced[0], "targets": produced[1]}
    if isinstance(produced, (np.ndarray, torch.Tensor)):
        produced = {"inputs": produced}
    if not isinstance(produced, dict):
        raise UsageError(f"{what}: expected named arrays (a dict), an (inputs, targets) pair or one array")
    return {k: v if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in produced.items()}


def _arrays_fingerprint(spec: DatasetSpec, arrays: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = arrays[key]
        if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16:  # NumPy has no bfloat16: hash its bits
            a = a.detach().cpu().contiguous().view(torch.int16).numpy()
            h.update(b"bfloat16")
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _array_data(
    spec: DatasetSpec, arrays: dict[str, Any], fingerprint: str, what: str, available: list[str] | None = None
) -> ArrayData:
    """Pick inputs/targets out of named arrays; `available` lists every name the file has (for messages)."""
    found = ", ".join(available if available is not None else arrays) or "none"
    key = spec.inputs if isinstance(spec.inputs, str) else None
    if key is None:
        raise UsageError(f"{what}: a list of input columns only applies to .parquet files")
    if key not in arrays:
        raise UsageError(f"{what}: no array named {key!r} for inputs (found: {found}); set inputs = '...'")
    x = arrays[key]
    y = None
    if spec.targets is not None:
        if spec.targets not in arrays:
            raise UsageError(f"{what}: no array named {spec.targets!r} for targets (found: {found})")
        y = arrays[spec.targets]
        if y.shape[0] != x.shape[0]:
            raise UsageError(f"{what}: inputs have {x.shape[0]} rows but targets have {y.shape[0]}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise UsageError(f"{what}: inputs are empty")
    _check_dtype(x, f"{what}: inputs {key!r}", INPUT_KINDS)
    if y is not None:
        _check_dtype(y, f"{what}: targets {spec.targets!r}", TARGET_KINDS)
    bad = _nonfinite_rows(x, y)
    if bad is not None and bad.any():
        if spec.nonfinite != "drop":
            first = int(np.flatnonzero(bad)[0])
            where = _nonfinite_where(x, y, first, key, spec.targets)
            raise UsageError(
                f"{what}: {int(bad.sum())} of {len(bad)} rows hold NaN or infinite values (first: row {first}, "
                f"in {where}); fix the data or set nonfinite = 'drop' on the dataset"
            )
        keep = np.flatnonzero(~bad)
        if not len(keep):
            raise UsageError(f"{what}: every row holds a NaN or infinite value (nonfinite = 'drop' left none)")
        x = x[torch.from_numpy(keep)] if isinstance(x, torch.Tensor) else np.asarray(x)[keep]
        if y is not None:
            y = y[torch.from_numpy(keep)] if isinstance(y, torch.Tensor) else np.asarray(y)[keep]
    return ArrayData(spec.name, x, y, fingerprint, _task(spec, y))


# what a dataset's arrays may hold: NumPy dtype kinds and item sizes (a torch tensor is judged by the NumPy
# dtype it maps to; bfloat16, which NumPy lacks, counts as a float). Inputs: floating point, or 32/64-bit
# integer token ids; targets: numbers (class labels, regression values) or booleans.
INPUT_KINDS = {"f": None, "i": (4, 8)}
TARGET_KINDS = {"f": None, "i": None, "u": None, "b": None}
_ROWS_PER_CHECK = 65536  # rows scanned at a time for non-finite values (a memory map stays out of memory)


def _check_dtype(a: Any, what: str, kinds: dict[str, tuple[int, ...] | None]) -> None:
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bfloat16 and "f" in kinds:
            return
        if a.is_complex():
            kind, size, name = "c", a.element_size(), str(a.dtype).replace("torch.", "")
        else:
            dt = torch.empty(0, dtype=a.dtype).numpy().dtype
            kind, size, name = dt.kind, dt.itemsize, dt.name
    else:
        dt = np.asarray(a[:0]).dtype if hasattr(a, "__getitem__") else np.asarray(a).dtype
        kind, size, name = dt.kind, dt.itemsize, dt.name
    sizes = kinds.get(kind, ())
    if kind in kinds and (sizes is None or size in sizes):
        return
    expected = "floating point or int32/int64 token ids" if kinds is INPUT_KINDS else "numbers or booleans"
    raise UsageError(f"{what}: expected {expected}, got dtype {name}")


def _nonfinite_rows(x: Any, y: Any) -> np.ndarray | None:
    """A boolean per row: does its input (or target) hold a NaN or an infinity? None: nothing can."""
    arrays = [a for a in (x, y) if a is not None and _is_float(a)]
    if not arrays:
        return None
    n = int(x.shape[0])
    bad = np.zeros(n, dtype=bool)
    for a in arrays:
        for start in range(0, n, _ROWS_PER_CHECK):
            chunk = a[start : start + _ROWS_PER_CHECK]
            if isinstance(chunk, torch.Tensor):
                finite = torch.isfinite(chunk.float() if chunk.dtype == torch.bfloat16 else chunk).numpy()
            else:
                finite = np.isfinite(np.asarray(chunk))
            bad[start : start + len(finite)] |= ~finite.reshape(len(finite), -1).all(axis=1)
    return bad


def _is_float(a: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return a.is_floating_point()
    return np.issubdtype(a.dtype, np.floating)


def _nonfinite_where(x: Any, y: Any, row: int, inputs: str, targets: str | None) -> str:
    def bad(a: Any) -> bool:
        v = a[row]
        v = v.float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        return not np.isfinite(v).all()

    return f"inputs {inputs!r}" if _is_float(x) and bad(x) else f"targets {targets!r}"


def _task(spec: DatasetSpec, y: Any) -> str | None:
    if spec.task is not None or y is None:
        return spec.task
    dtype = y.dtype
    is_float = (
        dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.floating)
    )
    return "regression" if is_float else "classification"


def _parquet_data(spec: DatasetSpec, path: Path, fingerprint: str, what: str) -> ParquetData:
    import duckdb

    con = duckdb.connect()
    inputs = [spec.inputs] if isinstance(spec.inputs, str) else list(spec.inputs)
    try:
        types = dict(
            (r[0], r[1]) for r in con.execute("describe select * from read_parquet(?)", [str(path)]).fetchall()
        )
        columns = list(types)
        for c in [*inputs, *([spec.targets] if spec.targets else [])]:
            if c not in columns:
                raise UsageError(f"{what}: no column {c!r} in {path.name} (columns: {', '.join(columns)})")
        for c in inputs:
            _check_column_type(types[c], f"{what}: input column {c!r}", INPUT_TYPES)
        if spec.targets:
            _check_column_type(types[spec.targets], f"{what}: target column {spec.targets!r}", TARGET_TYPES)
        n = con.execute("select count(*) from read_parquet(?)", [str(path)]).fetchone()[0]
        sample = con.execute("select * from read_parquet(?) limit 1", [str(path)]).fetchnumpy()
        _check_parquet_finite(con, path, [*inputs, *([spec.targets] if spec.targets else [])], types, what)
    except duckdb.Error as e:
        raise UsageError(f"{what}: cannot read {path.name}: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
    y = _column(sample[spec.targets]) if spec.targets else None
    return ParquetData(spec.name, path, inputs, spec.targets, int(n), fingerprint, _task(spec, y))


# Parquet column types (DuckDB's names, a list column as its element type) a dataset may use, as for arrays
INPUT_TYPES = ("FLOAT", "DOUBLE", "INTEGER", "BIGINT")
TARGET_TYPES = ("FLOAT", "DOUBLE", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                "UINTEGER", "UBIGINT", "BOOLEAN")


def _check_column_type(duck_type: str, what: str, allowed: tuple[str, ...]) -> None:
    element = duck_type.split("[")[0]
    if element not in allowed:
        raise UsageError(f"{what}: expected one of {', '.join(allowed)} (or a list of them), got {duck_type}")


def _check_parquet_finite(con: Any, path: Path, columns: list[str], types: dict[str, str], what: str) -> None:
    """One scan counting the rows with a NaN or infinite value in a float column (lists element-wise)."""
    tests = []
    for c in columns:
        element, is_list = types[c].split("[")[0], "[" in types[c]
        if element not in ("FLOAT", "DOUBLE"):
            continue
        q = '"' + c.replace('"', '""') + '"'
        tests.append(f"list_bool_or(list_transform({q}, lambda v: not isfinite(v)))" if is_list else f"not isfinite({q})")
    if not tests:
        return
    any_bad = " or ".join(f"coalesce({t}, false)" for t in tests)
    count, first = con.execute(
        f"select count(*) filter (where {any_bad}), min(i) filter (where {any_bad}) "
        "from (select *, row_number() over () - 1 as i from read_parquet(?))",
        [str(path)],
    ).fetchone()
    if count:
        raise UsageError(
            f"{what}: {count} rows of {path.name} hold NaN or infinite values (first: row {first}); fix the data "
            "(nonfinite = 'drop' applies to array datasets only)"
        )
