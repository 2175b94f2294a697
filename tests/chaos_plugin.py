"""A third-party probe that misbehaves on request, installed like tests/external_plugin.py, for executor tests.

`chaos` takes no model and no dataset, so a config of N entries (``k = 0 … N−1``) is N distinct small jobs.
Modes: ``ok``; ``raise`` (an exception); ``kill_once`` (the worker process SIGKILLs itself the first time,
leaving a marker file, then succeeds); ``kill_always``; ``oom`` (a simulated CUDA out-of-memory error while
``batch_size`` > 8). Every start writes ``start-<k>-<pid>`` into ``marker_dir`` so tests can find the worker.
"""

from __future__ import annotations

from pathlib import Path

from external_plugin import install_plugin

PROBE_SOURCE = '''
"""A probe that misbehaves on request (model-audit's executor tests)."""
import os
import signal
import time
from pathlib import Path

import torch

from audit import Needs, Param, Probe, ProbeResult, hookimpl


class Chaos(Probe):
    name = "chaos"
    version = "0.1.0"
    description = "Sleeps, raises, kills its worker or runs out of memory on request (executor tests)."
    params = (
        Param("k", int, 0, "job id"),
        Param("mode", str, "ok", "what to do", choices=("ok", "raise", "kill_once", "kill_always", "oom")),
        Param("sleep", float, 0.0, "seconds to sleep", min=0),
        Param("spin", float, 0.0, "seconds of busy CPU work", min=0),
        Param("marker_dir", str, "", "where start and kill markers go"),
        Param("batch_size", int, 64, "the memory knob", min=1),
    )
    needs = Needs(models=(0, 0), datasets=(0, 0), gpus=0.0)
    oom_param = "batch_size"

    def run(self, ctx, params):
        k, mode = params["k"], params["mode"]
        markers = Path(params["marker_dir"]) if params["marker_dir"] else None
        if markers is not None:
            (markers / f"start-{k}-{os.getpid()}").touch()
        if mode == "kill_once" and markers is not None and not (markers / f"killed-{k}").exists():
            (markers / f"killed-{k}").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "kill_always":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "raise":
            raise RuntimeError(f"deliberate failure of job {k}")
        if mode == "oom" and params["batch_size"] > 8:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {params['batch_size']} MiB (simulated)"
            )
        time.sleep(params["sleep"])
        end = time.perf_counter() + params["spin"]
        while time.perf_counter() < end:
            pass
        result = ProbeResult()
        result.metric("k", k)
        result.metric("batch_size", params["batch_size"])
        result.metric("pid", os.getpid())
        return result


@hookimpl
def register_probes(register):
    register(Chaos())
'''


def install_chaos_plugin(folder: Path) -> Path:
    """Write the plugin module and its .dist-info into `folder`; return the folder (for PYTHONPATH)."""
    return install_plugin(folder, "audit_chaos", PROBE_SOURCE, "0.1.0", "chaos")


def chaos_project(
    folder: Path, modes: list[str], *, sleep: float = 0.0, spin: float = 0.0, executor: str = ""
) -> Path:
    """An audit.toml with one chaos entry per mode (job k has mode modes[k]); returns the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    markers = folder / "markers"
    markers.mkdir(exist_ok=True)
    lines = [executor] if executor else []
    for k, mode in enumerate(modes):
        lines.append(
            f'[[probes]]\nprobe = "chaos"\nparams = {{ k = {k}, mode = "{mode}", sleep = {sleep}, spin = {spin}, '
            f'marker_dir = "{markers}" }}\n'
        )
    config = folder / "audit.toml"
    config.write_text("\n".join(lines))
    return config
