"""audit.toml → typed objects, and every kind of configuration error (file, dotted key, what was expected)."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from audit.api.errors import ConfigError, UsageError
from audit.config import DEFAULT_CATALOG, Config, DatasetSpec, GateSpec, ModelSpec, ProbeEntry, load_config
from audit.registry import installed_probes
from conftest import audit_cli

CKA_DEFAULTS = {
    "layers": [],
    "sequence": "flatten",
    "batch_size": 256,
    "estimator": "unbiased",
    "gram_dtype": "float32",
    "eigenvalues": 3,
}

# Files a config may point at; the loader only checks that they exist (and their suffix), it reads none.
FILES = (
    "weights/a.safetensors",
    "b.ts",
    "c.pt",
    "w.pt",
    "w.onnx",
    "data/id.npz",
    "d.npz",
    "d.csv",
    "d.npy",
)


@pytest.fixture
def probes():
    found = installed_probes()
    assert "cka" in found
    return found


def write(folder: Path, text: str, name: str = "audit.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for rel in FILES:
        f = folder / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, probes, text: str) -> tuple[ConfigError, Path]:
    path = write(tmp_path, text)
    from audit.run.executors import installed_executors

    with pytest.raises(ConfigError) as info:
        load_config(path, probes, installed_executors())
    return info.value, path


# ---------------------------------------------------------------- a valid file

VALID = """
    seed = 7
    device = "cpu"
    catalog = "results/cat.duckdb"

    [models.a]
    factory = "mymodels:build"
    kwargs = { hidden = 8, act = "relu" }
    weights = "weights/a.safetensors"

    [models.b]
    torchscript = "b.ts"

    [models.c]
    pickle = "c.pt"
    trust = true

    [datasets.id]
    path = "data/id.npz"
    targets = "targets"

    [datasets.gen]
    factory = "mydata:make"
    kwargs = { n = 10 }
    inputs = "x"
    task = "regression"

    [[probes]]
    probe = "cka"
    models = ["a", "b"]
    datasets = ["id"]
    params = { batch_size = 64, layers = "fc*", estimator = "biased" }
    label = "fc"

    [[probes]]
    probe = "cka"
    models = "c"

    [[gates]]
    probe = "cka"
    metric = "accuracy"
    min = 1
    model = "a"
    dataset = "id"
    entry = "fc"

    [[gates]]
    name = "close to b"
    probe = "cka"
    metric = "diagonal_mean"
    max = 0.5
    model = "a"
    baseline = "b"
    entry = "cka"
"""


def test_valid_config_round_trips_into_typed_objects(tmp_path, probes, monkeypatch):
    project = tmp_path / "proj"
    path = write(project, VALID)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths are relative to the file's folder, not the cwd

    cfg = load_config(Path("../proj/audit.toml"), probes)

    root = project.resolve()
    assert isinstance(cfg, Config)
    assert cfg.path == path.resolve()
    assert cfg.root == root
    assert cfg.catalog == root / "results" / "cat.duckdb"
    assert cfg.seed == 7
    assert cfg.device == "cpu"
    assert cfg.text_hash == hashlib.sha256(path.read_bytes()).hexdigest()

    assert list(cfg.models) == ["a", "b", "c"]
    assert cfg.models["a"] == ModelSpec(
        "a",
        factory="mymodels:build",
        kwargs={"hidden": 8, "act": "relu"},
        weights=root / "weights" / "a.safetensors",
    )
    assert cfg.models["b"] == ModelSpec("b", torchscript=root / "b.ts")
    assert cfg.models["c"] == ModelSpec("c", pickle=root / "c.pt")

    assert cfg.datasets["id"] == DatasetSpec("id", path=root / "data" / "id.npz", targets="targets")
    assert cfg.datasets["id"].inputs == "inputs"  # the default array name
    assert cfg.datasets["id"].task is None
    assert cfg.datasets["gen"] == DatasetSpec(
        "gen", factory="mydata:make", kwargs={"n": 10}, inputs="x", targets=None, task="regression"
    )

    assert cfg.probes == [
        ProbeEntry(
            0,
            "cka",
            ["a", "b"],
            ["id"],
            {**CKA_DEFAULTS, "batch_size": 64, "layers": ["fc*"], "estimator": "biased"},
            "fc",
        ),
        # models given as one string; datasets omitted = every defined dataset; params all defaults; the
        # label: the probe's name (the defaults), as the other entry of the probe has its own
        ProbeEntry(1, "cka", ["c"], ["id", "gen"], CKA_DEFAULTS, "cka"),
    ]

    g0, g1 = cfg.gates
    fc, defaults = cfg.probes[0].params_fingerprint, cfg.probes[1].params_fingerprint
    assert g0 == GateSpec(
        0, "cka", "accuracy", min=1.0, max=None, model="a", dataset="id", entry="fc", params_fingerprint=fc
    )
    assert isinstance(g0.min, float)
    assert g0.label == "fc.accuracy >= 1"
    assert g1 == GateSpec(
        1, "cka", "diagonal_mean", max=0.5, model="a", baseline="b", name="close to b", entry="cka",
        params_fingerprint=defaults,
    )
    assert g1.label == "close to b"


def test_defaults_for_an_empty_file(tmp_path, probes):
    path = write(tmp_path, "")
    cfg = load_config(path, probes)
    assert cfg.catalog == tmp_path.resolve() / DEFAULT_CATALOG
    assert DEFAULT_CATALOG == ".audit/catalog.duckdb"
    assert cfg.seed == 0
    assert cfg.device == "auto"
    assert (cfg.models, cfg.datasets, cfg.probes, cfg.gates) == ({}, {}, [], [])


def test_gate_label_with_both_bounds_and_baseline(tmp_path, probes):
    path = write(
        tmp_path,
        """
        [models.m]
        torchscript = "b.ts"
        [models.n]
        torchscript = "b.ts"
        [[gates]]
        probe = "cka"
        metric = "diagonal_mean"
        min = 0.25
        max = 2
        model = "m"
        baseline = "n"
    """,
    )
    (gate,) = load_config(path, probes).gates
    assert (gate.min, gate.max) == (0.25, 2.0)
    assert gate.label == "cka.diagonal_mean - n >= 0.25 and <= 2"


def test_config_error_is_a_usage_error():
    e = ConfigError("/x/audit.toml", "models.m.weights", "file not found")
    assert isinstance(e, UsageError)
    assert str(e) == "/x/audit.toml: models.m.weights: file not found"
    assert (e.file, e.key) == ("/x/audit.toml", "models.m.weights")


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path, probes):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, probes)
    assert str(info.value).startswith(f"{path}: file not found")


def test_invalid_toml_names_the_file_and_the_line(tmp_path, probes):
    e, path = load_error(tmp_path, probes, "seed = = 1\n")
    assert e.key == ""
    assert str(e).startswith(f"{path}: not valid TOML: ")
    assert "line 1" in str(e)


def test_non_utf8_file_is_invalid_toml(tmp_path, probes):
    path = tmp_path / "audit.toml"
    path.write_bytes(b'seed = 1\ncatalog = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, probes)


MODEL_ERRORS = [
    pytest.param(
        "[models.m]\nkwargs = { a = 1 }\n",
        "models.m",
        [
            "expected exactly one of: factory, torchvision or timm (each with optional weights), "
            "huggingface, torchscript, or pickle (with trust = true)"
        ],
        id="model-without-source",
    ),
    pytest.param(
        '[models.m]\nfactory = "x:y"\ntorchscript = "b.ts"\n',
        "models.m",
        ["expected exactly one of: factory"],
        id="model-factory-and-torchscript",
    ),
    pytest.param(
        '[models.m]\ntorchscript = "b.ts"\npickle = "c.pt"\ntrust = true\n',
        "models.m",
        ["expected exactly one of: factory"],
        id="model-torchscript-and-pickle",
    ),
    pytest.param(
        '[models.m]\npickle = "c.pt"\n',
        "models.m.pickle",
        ["set trust = true", "runs code"],
        id="pickle-without-trust",
    ),
    pytest.param(
        '[models.m]\npickle = "c.pt"\ntrust = false\n',
        "models.m.pickle",
        ["trust = true"],
        id="pickle-trust-false",
    ),
    pytest.param(
        '[models.m]\npickle = "c.pt"\ntrust = "yes"\n',
        "models.m.trust",
        ["expected true or false, got 'yes'"],
        id="trust-not-bool",
    ),
    pytest.param(
        '[models.m]\nfactory = "x:y"\nweights = "missing.safetensors"\n',
        "models.m.weights",
        ["file not found: ", "missing.safetensors"],
        id="weights-missing",
    ),
    pytest.param(
        '[models.m]\nfactory = "x:y"\nweights = "w.onnx"\n',
        "models.m.weights",
        ["expected a .safetensors or a .pt/.pth state dict, got 'w.onnx'"],
        id="weights-bad-suffix",
    ),
    pytest.param(
        '[models.m]\ntorchscript = "b.ts"\nweights = "w.pt"\n',
        "models.m.weights",
        ["weights need a factory"],
        id="weights-without-factory",
    ),
    pytest.param(
        '[models.m]\ntorchscript = "missing.ts"\n',
        "models.m.torchscript",
        ["file not found"],
        id="torchscript-missing",
    ),
    pytest.param(
        '[models.m]\nfactory = "nocolon"\n',
        "models.m.factory",
        ["expected 'module:function', got 'nocolon'"],
        id="factory-nocolon",
    ),
    pytest.param(
        '[models.m]\nfactory = "a:b:c"\n',
        "models.m.factory",
        ["expected 'module:function', got 'a:b:c'"],
        id="factory-two-colons",
    ),
    pytest.param(
        '[models.m]\nfactory = ":build"\n',
        "models.m.factory",
        ["expected 'module:function'"],
        id="factory-no-module",
    ),
    pytest.param(
        '[models.m]\nfactory = "x:y"\nkwargs = 3\n',
        "models.m.kwargs",
        ["expected a table, got 3"],
        id="kwargs-not-table",
    ),
    pytest.param(
        '[models.m]\nfactory = "x:y"\nweigths = "w.pt"\n',
        "models.m.weigths",
        [
            "unknown key (expected one of: class, factory, huggingface, kwargs, output, pickle, timm, "
            "torchscript, torchvision, trust, weights)"
        ],
        id="model-typo-key",
    ),
    pytest.param("models = 3\n", "models", ["expected a table, got 3"], id="models-not-table"),
]

DATASET_ERRORS = [
    pytest.param(
        '[datasets.d]\npath = "d.npz"\nfactory = "x:y"\n',
        "datasets.d",
        ["expected exactly one of path = 'file' or factory = 'module:function'"],
        id="dataset-path-and-factory",
    ),
    pytest.param(
        '[datasets.d]\ntargets = "y"\n',
        "datasets.d",
        ["expected exactly one of path"],
        id="dataset-without-source",
    ),
    pytest.param(
        '[datasets.d]\npath = "d.csv"\n',
        "datasets.d.path",
        ["expected one of .npz, .npy, .pt, .pth, .parquet, got 'd.csv'"],
        id="dataset-bad-suffix",
    ),
    pytest.param(
        '[datasets.d]\npath = "gone.npz"\n',
        "datasets.d.path",
        ["file not found: ", "gone.npz"],
        id="dataset-missing",
    ),
    pytest.param(
        '[datasets.d]\nfactory = "nocolon"\n',
        "datasets.d.factory",
        ["expected 'module:function', got 'nocolon'"],
        id="dataset-factory-nocolon",
    ),
    pytest.param(
        '[datasets.d]\npath = "d.npz"\ntask = "clustering"\n',
        "datasets.d.task",
        ["expected one of classification, regression, got 'clustering'"],
        id="dataset-bad-task",
    ),
    pytest.param(
        '[datasets.d]\npath = "d.npz"\ninputs = [1, 2]\n',
        "datasets.d.inputs",
        ["expected an array name or a list of column names"],
        id="dataset-bad-inputs",
    ),
    pytest.param(
        '[datasets.d]\npath = "d.npz"\ntargets = 1\n',
        "datasets.d.targets",
        ["expected a string, got 1"],
        id="dataset-targets-not-string",
    ),
]

_M = '[models.m]\ntorchscript = "b.ts"\n[models.n]\ntorchscript = "b.ts"\n[models.o]\ntorchscript = "b.ts"\n'
_D = '[datasets.d]\npath = "d.npz"\n'

PROBE_ERRORS = [
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "nope"\n',
        "probes[0].probe",
        ["unknown probe 'nope' (installed: ", "cka"],
        id="unknown-probe",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nmodels = ["m"]\n',
        "probes[0].probe",
        ["missing (required)"],
        id="probe-name-missing",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nparams = { colour = 1 }\n',
        "probes[0].params",
        [
            "unknown parameter 'colour' for probe 'cka' "
            "(known: layers, sequence, batch_size, estimator, gram_dtype, eigenvalues)"
        ],
        id="unknown-param",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nparams = { batch_size = "big" }\n',
        "probes[0].params.batch_size",
        ["expected an integer, got 'big'"],
        id="param-wrong-type",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nparams = { batch_size = 64.0 }\n',
        "probes[0].params.batch_size",
        ["expected an integer, got 64.0"],
        id="param-float-for-int",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nparams = { batch_size = true }\n',
        "probes[0].params.batch_size",
        ["expected an integer, got True"],
        id="param-bool-for-int",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nparams = { batch_size = 2 }\n',
        "probes[0].params.batch_size",
        ["expected a value >= 4, got 2"],
        id="param-out-of-range",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nparams = { estimator = "weird" }\n',
        "probes[0].params.estimator",
        ["expected one of 'unbiased', 'biased', got 'weird'"],
        id="param-bad-choice",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nparams = { layers = [1] }\n',
        "probes[0].params.layers",
        ["expected a list of strings, got [1]"],
        id="param-bad-list",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m", "zz"]\n',
        "probes[0].models",
        ["unknown model 'zz' (defined: m, n, o)"],
        id="entry-unknown-model",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\ndatasets = ["zz"]\n',
        "probes[0].datasets",
        ["unknown dataset 'zz' (defined: d)"],
        id="entry-unknown-dataset",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m", "n", "o"]\n',
        "probes[0].models",
        ["probe 'cka' takes at most 2 per job, got 3"],
        id="too-many-models",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = []\n',
        "probes[0].models",
        ["probe 'cka' needs at least 1, got 0"],
        id="too-few-models",
    ),
    pytest.param(
        _M + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\n',
        "probes[0].datasets",
        ["probe 'cka' needs at least 1, got 0"],
        id="no-datasets-defined",
    ),
    pytest.param(
        _M + _D + '[[probes]]\nprobe = "cka"\nmodels = ["m"]\nshape = 1\n',
        "probes[0].shape",
        ["unknown key (expected one of: datasets, label, models, params, probe)"],
        id="entry-unknown-key",
    ),
    pytest.param(
        'probes = { probe = "cka" }\n' + _M + _D,
        "probes",
        ["expected a list, got"],
        id="probes-not-a-list",
    ),
]

GATE_ERRORS = [
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\n',
        "gates[0]",
        ["a gate needs min and/or max"],
        id="gate-without-bounds",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = nan\n',
        "gates[0].min",
        ["expected a number, got nan"],
        id="gate-min-nan",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmax = -nan\n',
        "gates[0].max",
        ["expected a number, got nan"],
        id="gate-max-nan",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 2\nmax = 1\n',
        "gates[0].min",
        ["min (2) is above max (1)"],
        id="gate-min-above-max",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 0.5\nmodel = "zz"\n',
        "gates[0].model",
        ["unknown model 'zz' (defined: m, n, o)"],
        id="gate-unknown-model",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 0.5\nbaseline = "zz"\n',
        "gates[0].baseline",
        ["unknown model 'zz' (defined: m, n, o)"],
        id="gate-unknown-baseline",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "nope"\nmetric = "accuracy"\nmin = 0.5\n',
        "gates[0].probe",
        ["unknown probe 'nope' (installed: ", "cka"],
        id="gate-unknown-probe",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmin = 0.5\n',
        "gates[0].metric",
        ["missing (required)"],
        id="gate-without-metric",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = "high"\n',
        "gates[0].min",
        ["expected an integer or a number, got 'high'"],
        id="gate-min-not-a-number",
    ),
    pytest.param(
        _M + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmax = true\n',
        "gates[0].max",
        ["got True"],
        id="gate-max-bool",
    ),
]

TOP_ERRORS = [
    pytest.param(
        'colour = "red"\n',
        "colour",
        ["unknown key (expected one of: catalog, datasets, device, executor, gates, models, probes, seed)"],
        id="unknown-top-key",
    ),
    pytest.param('seed = "zero"\n', "seed", ["expected an integer, got 'zero'"], id="seed-not-int"),
    pytest.param("seed = true\n", "seed", ["expected an integer, got True"], id="seed-bool"),
    pytest.param("catalog = 5\n", "catalog", ["expected a string, got 5"], id="catalog-not-string"),
    pytest.param("device = 0\n", "device", ["expected a string, got 0"], id="device-not-string"),
    pytest.param('device = "gpu"\n', "device", ["expected auto, cpu, cuda or cuda:N, got 'gpu'"], id="device-gpu"),
    pytest.param('catalog = ""\n', "catalog", ["expected a file path"], id="catalog-empty"),
    pytest.param(
        '[executor]\nname = "slurm"\n', "executor.name", ["unknown executor 'slurm' (installed: "], id="executor-unknown"
    ),
    pytest.param(
        '[executor]\nworkers = "many"\n', "executor.workers", ["expected"], id="executor-option-type"
    ),
    pytest.param(
        '[executor]\nname = "inline"\nworkers = 2\n',
        "executor.workers",
        ["unknown option 'workers' for executor 'inline'"],
        id="executor-option-unknown",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "fragments"), TOP_ERRORS + MODEL_ERRORS + DATASET_ERRORS + PROBE_ERRORS + GATE_ERRORS
)
def test_config_errors_name_file_key_and_expectation(tmp_path, probes, text, key, fragments):
    e, path = load_error(tmp_path, probes, text)
    assert e.key == key
    assert e.file == str(path)
    assert str(e).startswith(f"{path}: {key}: "), str(e)
    for fragment in fragments:
        assert fragment in str(e)
    assert "\n" not in str(e)


def test_executor_table_is_validated_once_with_defaults_filled_in(tmp_path, probes):
    from audit.run.executors import installed_executors

    cfg = load_config(write(tmp_path, "[executor]\nworkers = 3\n"), probes, installed_executors())
    assert cfg.executor["name"] == "local" and cfg.executor["workers"] == 3
    assert set(cfg.executor) == {"name", *(p.name for p in installed_executors()["local"].options)}
    assert load_config(write(tmp_path, ""), probes, installed_executors()).executor == {}


def test_the_catalog_is_resolved_one_way(tmp_path, probes):
    from audit.config import catalog_location

    path = write(tmp_path, 'catalog = "sub/../c.duckdb"\n')
    assert catalog_location(path) == load_config(path, probes).catalog == (tmp_path / "c.duckdb").resolve()
    assert catalog_location(tmp_path / "absent.toml") == (Path.cwd() / DEFAULT_CATALOG).resolve()


def test_missing_weights_message_names_the_resolved_path(tmp_path, probes):
    e, _ = load_error(tmp_path, probes, '[models.m]\nfactory = "x:y"\nweights = "sub/../w2.pt"\n')
    assert str(e).endswith(f"file not found: {(tmp_path / 'w2.pt').resolve()}")


def test_gate_naming_an_unknown_dataset(tmp_path, probes):
    e, _ = load_error(
        tmp_path,
        probes,
        _M + _D + '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 0.5\ndataset = "zz"\n',
    )
    assert e.key == "gates[0].dataset"
    assert "unknown dataset 'zz'" in str(e)


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        pytest.param(
            '[models.m]\npickle = "c.pt"\n', "models.m.pickle", "trust = true", id="pickle-without-trust"
        ),
        pytest.param("seed = = 1\n", "", "not valid TOML", id="invalid-toml"),
    ],
)
def test_cli_reports_a_config_error_as_one_line_exit_2(tmp_path, text, key, fragment):
    bad = write(tmp_path, text, name="BAD.toml")
    proc = audit_cli("run", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    (line,) = lines
    assert line.startswith("error: ")
    assert str(bad) in line
    if key:
        assert f"{bad}: {key}: " in line
    assert fragment in line
    assert proc.stdout == ""


# ---------------------------------------------------------------- families of models (a glob of files)


def save_linear(path: Path, seed: int) -> None:
    """A tiny real checkpoint: the state dict of an nn.Linear, as safetensors."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in torch.nn.Linear(3, 2).state_dict().items()}, str(path))


FAMILY = """
    [models.cand_a]
    torchscript = "b.ts"

    [models.seed]
    factory = "demo_models:mlp"
    kwargs = { width = 4 }
    weights = "models/seed_*.safetensors"

    [models.cand_b]
    torchscript = "b.ts"

    [datasets.d]
    path = "d.npz"
"""


@pytest.fixture
def family(tmp_path) -> Path:
    for i in (2, 0, 1, 10):  # created out of order; expanded in sorted order
        save_linear(tmp_path / "models" / f"seed_{i:02d}.safetensors", i)
    save_linear(tmp_path / "models" / "cand.safetensors", 99)  # does not match the pattern
    (tmp_path / "models" / "seed_notes.txt").write_text("not a checkpoint, not matched")
    return tmp_path


def test_a_glob_of_weights_is_a_family_of_models_named_by_file_stem(family, probes):
    cfg = load_config(write(family, FAMILY), probes)
    root = family.resolve()
    seeds = ["seed/seed_00", "seed/seed_01", "seed/seed_02", "seed/seed_10"]
    assert list(cfg.models) == ["cand_a", *seeds, "cand_b"]  # the family takes its table's place
    assert "seed" not in cfg.models
    for name in seeds:
        spec = cfg.models[name]
        assert spec == ModelSpec(
            name,
            factory="demo_models:mlp",
            kwargs={"width": 4},
            weights=root / "models" / f"{name.split('/')[1]}.safetensors",
            family="seed",
        )
    assert cfg.models["cand_a"].family is None


def test_a_glob_of_torchscript_files_and_a_recursive_glob(tmp_path, probes):
    for rel in ("runs/s1/model.ts", "runs/s0/model.ts", "runs/s0/best.ts"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()  # the loader only checks that files exist
    cfg = load_config(write(tmp_path, '[models.ts]\ntorchscript = "runs/*/best.ts"\n'), probes)
    assert list(cfg.models) == ["ts/best"]
    assert cfg.models["ts/best"].torchscript == (tmp_path / "runs/s0/best.ts").resolve()
    e, _ = load_error(tmp_path, probes, '[models.ts]\ntorchscript = "runs/**/model.ts"\n')
    assert e.key == "models.ts.torchscript"  # two files named model.ts: the names would collide
    assert "both give the model name 'ts/model'" in str(e) and "narrow the pattern" in str(e)


def test_a_pattern_that_matches_no_file_is_one_line_naming_the_key_and_pattern(tmp_path, probes):
    e, path = load_error(
        tmp_path, probes, '[models.seed]\nfactory = "x:y"\nweights = "models/seed_*.safetensors"\n'
    )
    assert e.key == "models.seed.weights"
    assert str(e) == (
        f"{path}: models.seed.weights: pattern 'models/seed_*.safetensors' matches no file "
        f"under {tmp_path.resolve()}"
    )
    assert "\n" not in str(e)


def test_each_file_of_a_family_is_validated(family, probes):
    (family / "models" / "seed_99.onnx").touch()
    e, _ = load_error(family, probes, '[models.seed]\nfactory = "x:y"\nweights = "models/seed_*"\n')
    assert e.key == "models.seed.weights"
    assert "expected a .safetensors or a .pt/.pth state dict, got 'seed_99.onnx'" in str(e)
    e, _ = load_error(family, probes, '[models.seed]\nweights = "models/seed_*.safetensors"\n')
    assert e.key == "models.seed" and "expected exactly one of" in str(e)
    e, _ = load_error(family, probes, '[models.p]\npickle = "models/seed_*.safetensors"\n')
    assert e.key == "models.p.pickle" and "trust = true" in str(e)


def test_a_family_member_cannot_reuse_a_defined_name(family, probes):
    text = FAMILY + '\n[models."seed/seed_01"]\ntorchscript = "b.ts"\n'
    e, _ = load_error(family, probes, text)
    assert e.key == "models.seed/seed_01" and "'seed/seed_01' is already defined" in str(e)


def test_a_file_name_with_glob_characters_that_exists_is_taken_literally(tmp_path, probes):
    save_linear(tmp_path / "ckpt[1].safetensors", 0)
    cfg = load_config(
        write(tmp_path, '[models.m]\nfactory = "x:y"\nweights = "ckpt[1].safetensors"\n'), probes
    )
    assert list(cfg.models) == ["m"] and cfg.models["m"].family is None


def test_patterns_in_a_probe_entry_expand_in_order_of_definition(family, probes):
    text = FAMILY + (
        '[[probes]]\nprobe = "entk"\nmodels = ["seed/*", "cand_*"]\n'
        '[[probes]]\nprobe = "entk"\nmodels = ["cand_b", "cand_?", "seed/seed_0[01]"]\n'
        '[[probes]]\nprobe = "entk"\n'  # no models: every defined one, the family's members included
    )
    cfg = load_config(write(family, text), probes)
    seeds = ["seed/seed_00", "seed/seed_01", "seed/seed_02", "seed/seed_10"]
    assert cfg.probes[0].models == [*seeds, "cand_a", "cand_b"]
    # each model once; an exact name keeps its place, a later pattern adds only what is new
    assert cfg.probes[1].models == ["cand_b", "cand_a", "seed/seed_00", "seed/seed_01"]
    assert cfg.probes[2].models == ["cand_a", *seeds, "cand_b"]


def test_probe_entry_pattern_errors(family, probes):
    e, _ = load_error(family, probes, FAMILY + '[[probes]]\nprobe = "entk"\nmodels = ["seed/*", "zz*"]\n')
    assert e.key == "probes[0].models"
    assert "pattern 'zz*' matches no model (defined: cand_a, seed/seed_00," in str(e)
    e, _ = load_error(family, probes, FAMILY + '[[probes]]\nprobe = "entk"\nmodels = ["seed"]\n')
    assert e.key == "probes[0].models"
    assert "unknown model 'seed'; 'seed' is a family of models, name them all with 'seed/*'" in str(e)
    e, _ = load_error(family, probes, FAMILY + '[[probes]]\nprobe = "cka"\nmodels = ["seed/*"]\n')
    assert e.key == "probes[0].models" and "takes at most 2 per job, got 4" in str(e)
    e, _ = load_error(family, probes, FAMILY + '[[probes]]\nprobe = "entk"\ndatasets = ["x*"]\n')
    assert e.key == "probes[0].datasets" and "pattern 'x*' matches no dataset (defined: d)" in str(e)


def test_a_long_list_of_defined_names_is_shortened(tmp_path, probes):
    for i in range(30):
        (tmp_path / "m" / f"s{i:02d}.ts").parent.mkdir(exist_ok=True)
        (tmp_path / "m" / f"s{i:02d}.ts").touch()
    text = '[models.s]\ntorchscript = "m/*.ts"\n' + _D + '[[probes]]\nprobe = "entk"\nmodels = ["t*"]\n'
    e, _ = load_error(tmp_path, probes, text)
    assert str(e).endswith(
        "(defined: s/s00, s/s01, s/s02, s/s03, s/s04, s/s05, s/s06, s/s07, s/s08, s/s09, "
        "s/s10, s/s11, … (18 more))"
    )


def test_gate_model_patterns(family, probes):
    text = FAMILY + (
        '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 0.9\nmodel = "cand_*"\n'
        '[[gates]]\nprobe = "cka"\nmetric = "cross_mean"\nmin = 0.9\nmodel = "cand_a,seed/*"\ndataset = "?"\n'
    )
    g0, g1 = load_config(write(family, text), probes).gates
    assert g0.model == "cand_*" and g0.expected_models == ("cand_a", "cand_b")
    assert g1.model == "cand_a,seed/*" and g1.expected_models == ()  # a job label: matched as a whole


@pytest.mark.parametrize(
    ("gate", "key", "fragment"),
    [
        ('model = "zz*"', "gates[0].model", "pattern 'zz*' matches no model (defined: cand_a, seed/seed_00"),
        ('model = "cand_a,zz*"', "gates[0].model", "pattern 'zz*' matches no model"),
        ('dataset = "q*"', "gates[0].dataset", "pattern 'q*' matches no dataset (defined: d)"),
        ('baseline = "cand_*"', "gates[0].baseline", "expected the name of one model, not a pattern"),
    ],
)
def test_gate_pattern_errors(family, probes, gate, key, fragment):
    text = FAMILY + f'[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 0.9\n{gate}\n'
    e, _ = load_error(family, probes, text)
    assert e.key == key and fragment in str(e) and "\n" not in str(e)


def test_cli_reports_a_pattern_that_matches_no_file_as_one_line_exit_2(tmp_path):
    bad = write(tmp_path, '[models.seed]\nfactory = "x:y"\nweights = "models/seed_*.safetensors"\n')
    proc = audit_cli("run", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}: models.seed.weights: pattern 'models/seed_*.safetensors'")
