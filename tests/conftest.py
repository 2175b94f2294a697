"""Shared fixtures. Threads are pinned before numpy/torch load: two cores oversubscribe easily.

Where the time goes, and how this file keeps it down (the whole suite within 6 minutes on 2 cores, and
`pytest -m "not slow"` within 90 s):

- The demo project (17 trained MLPs, every built-in probe run once: about a minute of CPU) is built **once
  per test run**, by one real `audit demo` process (`demo_run`); tests copy it before writing anything.
  Every test that uses it is marked `slow` automatically (`DEMO_FIXTURES` below).
- Planning, configuration, gates and most CLI behaviour are tested on `mini_project`, a hand-made project
  of two small MLPs on 240 digits, built in about a second.
- The CLI runs in this process (`audit_cli`: typer's CliRunner on the real app) unless a test needs a real
  process: the exit code of the console script, a kill, a lock held by another process, concurrent
  writers, a plugin found on PYTHONPATH, worker processes dying with their parent (`run_audit`). Starting
  `audit` cost about 5 s of CPU then (torch, scipy and every probe imported), so 99 subprocesses were most of
  the old suite's time. Today only the commands that run probes (`audit run`, `audit demo`) import torch;
  `--help`, `query` and `gate` start in a few tenths of a second (tests/test_startup.py).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# rich decides at import whether it writes escape codes; `pytest -s` in a terminal must not change what
# the in-process CLI prints (tests that want colours build their own Console with force_terminal=True).
os.environ.setdefault("TTY_COMPATIBLE", "0")

import fcntl  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

torch.set_num_threads(1)
threadpool_limits(1)

SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "COLUMNS": "200",
    "NO_COLOR": "1",
}
CLI_ENV = {
    "COLUMNS": "200",
    "NO_COLOR": "1",
}  # what the in-process CLI sees, as SUBPROCESS_ENV gives a process

# Fixtures that need the demo project (trained models, every probe run once); a test using one is `slow`.
DEMO_FIXTURES = frozenset({"demo_run", "demo_source", "demo_catalog", "demo_project", "demo_ran"})


# ---------------------------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the collected tests in reverse order (finds tests that depend on what ran before them)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if DEMO_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--reverse"):
        items.reverse()


# ------------------------------------------------------------------------------------ test isolation


@pytest.fixture(autouse=True)
def _isolated_process_state(tmp_path_factory):
    """Each test starts from the same process state, whatever ran before it (so any order passes).

    Global RNGs are seeded (a test that forgets its seed is still repeatable), and what loading a
    project changes is undone: the project folder `audit.run.sources.import_factory` puts on sys.path, the
    factory modules imported from it (every test project names its module `demo_models`; a cached one
    from another project would be used instead), the working directory, torch's threads and dtype.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    path, cwd = list(sys.path), os.getcwd()
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    yield
    sys.path[:] = path
    os.chdir(cwd)
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    base = str(tmp_path_factory.getbasetemp())
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(base):
            del sys.modules[name]


# ------------------------------------------------------------------------------------------ devices

# The devices a device-sensitive test runs on: the CPU always (CPU-only CI runs every such test there), and
# the first GPU where CUDA is visible, so that one suite run on a CUDA machine checks both paths.
DEVICES = ("cpu", *(("cuda",) if torch.cuda.is_available() else ()))


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device of a device-sensitive test (capture, each probe's run, the output cache, executors,
    out-of-memory retry): parametrised over "cpu" and, when ``torch.cuda.is_available()``, "cuda". Put the
    model and every batch a test builds on it; compare floats with tolerances, since CUDA kernels (cuBLAS,
    cuDNN) round differently from the CPU's."""
    return torch.device(request.param)


def on(device: torch.device | str, *tensors: torch.Tensor):
    """The tensors moved to `device` (one tensor: that tensor; None stays None)."""
    moved = tuple(None if t is None else t.to(device) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


# ----------------------------------------------------------------------------------------- the CLI


def run_audit(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real `audit` CLI in a subprocess: for what needs a process (see the module docstring)."""
    return subprocess.run(
        [sys.executable, "-m", "audit.face.cli", *args],
        cwd=cwd,
        env={**SUBPROCESS_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_app():
    """The `audit` Typer app with the plugins' commands added, as `audit.face.cli.main` does once per process."""
    from audit.face.cli import app
    from audit.registry import plugin_manager

    if not getattr(app, "_test_plugin_commands", False):
        plugin_manager().hook.register_commands(app=app)
        app._test_plugin_commands = True  # type: ignore[attr-defined]
    return app


def audit_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `audit ARGS` in this process and answer like `run_audit`: returncode, stdout, stderr.

    Same parsing, commands, one-line errors and exit codes as the console script (`audit.face.cli.main` only adds
    the plugins' commands, done once by `cli_app`). An exception that escapes a command would print a
    traceback in a real process: it is appended to stderr here, so `"Traceback" not in stderr` means the same.
    """
    from typer.testing import CliRunner

    app = cli_app()
    before = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args), env=CLI_ENV)
    finally:
        os.chdir(before)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(result.exception)
        )
    return subprocess.CompletedProcess(["audit", *args], result.exit_code, result.stdout, stderr)


def copy_project(source: Path, dest: Path, catalog: bool = False) -> Path:
    """A private copy of a project (with its `.audit/` catalog only if `catalog`)."""
    ignore = ("__pycache__",) if catalog else (".audit", "__pycache__")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*ignore))
    return dest


# ------------------------------------------------------------------------------ catalog rows by hand


def stored_result(run_id: str, **fields):
    """An `audit.catalog.store.StoredResult` for tests that write the catalog directly: probe "p" version
    "1", one model ("m", fingerprint "fpm") and one dataset ("d", "fpd"), status ok, no parameters,
    warnings, metrics or arrays — each overridden by the field of the same name."""
    from audit.catalog.store import StoredResult

    defaults = {
        "cache_key": "k",
        "probe": "p",
        "probe_version": "1",
        "params": {},
        "models": [("m", "fpm")],
        "datasets": [("d", "fpd")],
        "status": "ok",
        "error": None,
        "warnings": [],
        "duration_s": 0.1,
        "device": "cpu",
        "metrics": [],
        "arrays": {},
    }
    return StoredResult(run_id=run_id, **{**defaults, **fields})


# ------------------------------------------------------------------------------- the demo project


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, worker_id: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`audit demo` into an empty folder, once per test run, in a real process: trains every model, runs every
    installed probe through the default executor (worker processes) and evaluates the gates.

    Returns the project and the finished process (tests/test_demo.py checks its output). Read-only for
    everyone: copy it (`demo_project`, `demo_ran`) before writing anything. Under pytest-xdist (`-n 2`) the
    workers share one build: the first to take the lock builds it in the run's common temporary folder and
    records the process's answer beside it; the others wait on the lock and read it.
    """
    if worker_id == "master":  # no xdist: this process is the whole run
        root = tmp_path_factory.mktemp("demo-run")
    else:
        root = tmp_path_factory.getbasetemp().parent / "demo-run-shared"
        root.mkdir(exist_ok=True)
    project, answer = root / "project", root / "demo-answer.json"
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while building; a second worker blocks here, then reads
        try:
            if not answer.exists():
                r = run_audit("demo", "--dir", str(project), timeout=900)
                answer.write_text(json.dumps([r.returncode, r.stdout, r.stderr]))
            code, stdout, stderr = json.loads(answer.read_text())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    r = subprocess.CompletedProcess(["audit", "demo"], code, stdout, stderr)
    assert r.returncode in (0, 1), r.stderr  # 1: a gate failed, which the reports must show too
    assert (project / ".audit" / "catalog.duckdb").exists(), r.stderr
    return project, r


@pytest.fixture(scope="session")
def worker_id(request) -> str:
    """pytest-xdist's worker name ("gw0", "gw1", ...), or "master" when the run is one process."""
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


@pytest.fixture(scope="session")
def demo_catalog(demo_run) -> Path:
    """The demo project after `audit demo` (every installed probe run once): read it, never write to it."""
    return demo_run[0]


@pytest.fixture(scope="session")
def demo_source(demo_run) -> Path:
    """The demo project's files (trained models, data, audit.toml); its catalog is there too: copy without it."""
    return demo_run[0]


@pytest.fixture
def demo_project(demo_source: Path, tmp_path: Path) -> Path:
    """A private copy of the demo project, without a catalog."""
    return copy_project(demo_source, tmp_path / "project")


@pytest.fixture
def demo_ran(demo_catalog: Path, tmp_path: Path) -> Path:
    """A private copy of the demo project with its catalog (one run that computed every result)."""
    return copy_project(demo_catalog, tmp_path / "project", catalog=True)


# ------------------------------------------------------------------------------- the mini project

MINI_MODELS = {"mlp_a": {"width": 32, "depth": 2, "seed": 0}, "mlp_b": {"width": 24, "depth": 2, "seed": 1}}
MINI_SIZES = {"digits_train": 150, "digits_test": 90, "digits_rotated": 90}
MINI_PROBES = """
[[probes]]
probe = "cka"
models = ["mlp_a"]
datasets = ["digits_test", "digits_rotated"]
params = { batch_size = 45 }

[[probes]]
probe = "cka"
models = ["mlp_a", "mlp_b"]
datasets = ["digits_test"]
params = { batch_size = 45 }

[[gates]]
name = "every layer has a defined CKA"
probe = "cka"
metric = "nonpositive_self_hsic_layers"
max = 0

[[gates]]
name = "in-distribution accuracy"
probe = "cka"
metric = "accuracy"
model = "mlp_a"
dataset = "digits_test"
min = 0.7
"""


def build_mini_project(directory: Path) -> Path:
    """The demo's layout in miniature: `demo_models:mlp` factories, two MLPs (widths 32 and 24) trained for a
    moment on 150 of scikit-learn's digits, an ID split and the same digits rotated by 90° (OOD), two CKA
    entries (ID/OOD and model × model) and two gates. About a second to build, a second to run."""
    from importlib import resources

    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    directory.mkdir(parents=True)
    (directory / "models").mkdir()
    (directory / "data").mkdir()
    factory_source = (resources.files("audit.face") / "templates" / "demo_models.py").read_text()
    (directory / "demo_models.py").write_text(factory_source)
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))[:240]
    xtr, ytr, xte, yte = x[order[:150]], y[order[:150]], x[order[150:]], y[order[150:]]
    rotated = np.rot90(xte.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(-1, 64).copy()
    for name, (xs, ys) in {
        "digits_train": (xtr, ytr),
        "digits_test": (xte, yte),
        "digits_rotated": (rotated, yte),
    }.items():
        np.savez(directory / "data" / f"{name}.npz", x=xs, y=ys)
    namespace: dict = {}
    exec(compile(factory_source, "demo_models.py", "exec"), namespace)
    text = 'catalog = ".audit/catalog.duckdb"\nseed = 0\n\n'
    for name, m in MINI_MODELS.items():
        model = _train_briefly(namespace["mlp"], xtr, ytr, m)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(directory / "models" / f"{name}.safetensors"),
        )
        text += (
            f'[models.{name}]\nfactory = "demo_models:mlp"\nkwargs = {{ width = {m["width"]}, depth = {m["depth"]} }}\n'
            f'weights = "models/{name}.safetensors"\n\n'
        )
    for name in MINI_SIZES:
        text += f'[datasets.{name}]\npath = "data/{name}.npz"\ninputs = "x"\ntargets = "y"\n\n'
    (directory / "audit.toml").write_text(text + MINI_PROBES)
    return directory


def _train_briefly(factory, x: np.ndarray, y: np.ndarray, m: dict) -> torch.nn.Module:
    """60 full-batch Adam steps from a seeded init (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(m["seed"])
        model = factory(width=m["width"], depth=m["depth"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def mini_source(tmp_path_factory) -> Path:
    """The mini project, built once per test run, without a catalog: copy it (`mini_project`) to write."""
    return build_mini_project(tmp_path_factory.mktemp("mini") / "project")


@pytest.fixture
def mini_project(mini_source: Path, tmp_path: Path) -> Path:
    """A private copy of the mini project, without a catalog."""
    return copy_project(mini_source, tmp_path / "project")


@pytest.fixture(scope="session")
def mini_catalog(mini_source: Path, tmp_path_factory) -> Path:
    """The mini project after one in-process `audit run` (3 CKA results): read it, never write to it."""
    project = copy_project(mini_source, tmp_path_factory.mktemp("mini-ran") / "project")
    r = audit_cli("run", "--executor", "inline", cwd=project)
    assert r.returncode == 0, r.stderr
    return project


@pytest.fixture
def mini_ran(mini_catalog: Path, tmp_path: Path) -> Path:
    """A private copy of the mini project with its catalog (one run that computed both CKA jobs)."""
    return copy_project(mini_catalog, tmp_path / "project", catalog=True)


# ------------------------------------------------------------------------------------------ examples

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_GENERATED = ("data", "models", ".audit", "*.html", "__pycache__")


def run_example_quick(name: str, tmp_path: Path) -> Path:
    """A private copy of examples/<name> after `python make_data.py --quick && audit run` (the reduced version)."""
    dest = tmp_path / name
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns(*_GENERATED))
    made = subprocess.run(
        [sys.executable, "make_data.py", "--quick"],
        cwd=dest,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    ran = audit_cli("run", cwd=dest)  # in this process (the jobs still run in the local pool's workers)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return dest
