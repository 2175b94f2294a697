"""A third-party probe, installed the way pip installs one: a module plus a .dist-info with entry points.

Put the returned folder on PYTHONPATH and importlib.metadata discovers the distribution, so the probe
reaches `audit` through the ``model_audit`` entry-point group with no change to the core.
"""

from __future__ import annotations

from pathlib import Path

PROBE_SOURCE = '''
"""An external probe used by model-audit's tests: mean of the model output; can sleep or fail on request."""
import time

from audit import Needs, Param, Probe, ProbeResult, hookimpl


class OutputMean(Probe):
    name = "output_mean"
    version = "0.3.0"
    description = "Mean and count of the model's outputs over a dataset (an external test plugin)."
    params = (
        Param("batch_size", int, 32, "examples per batch", min=1),
        Param("sleep", float, 0.0, "seconds to sleep before finishing (for fault tests)", min=0),
        Param("fail_on", str, "", "raise when the model has this name"),
    )
    needs = Needs(models=(1, 1), datasets=(1, 1))

    def run(self, ctx, params):
        model, data = ctx.models[0], ctx.datasets[0]
        if params["fail_on"] == model.name:
            raise RuntimeError(f"deliberate failure for {model.name}")
        bar = ctx.progress(data.n, "output_mean")
        total, count = 0.0, 0
        for x, _ in data.batches(params["batch_size"], ctx.device):
            out = model.load()(x)
            total += float(out.double().sum())
            count += out.numel()
            bar.advance(x.shape[0])
        time.sleep(params["sleep"])
        result = ProbeResult()
        result.metric("output_mean", total / count)
        result.metric("outputs", count)
        result.metric("random_draw", float(ctx.rng.random()))
        result.array("first_output", out[0].detach().cpu().numpy())
        return result


@hookimpl
def register_probes(register):
    register(OutputMean())


@hookimpl
def register_commands(app):
    @app.command(name="output-mean-info")
    def info():
        """A command added by the external plugin."""
        print("output_mean plugin, version", OutputMean.version)
'''


def install_plugin(folder: Path, module: str, source: str, version: str, entry: str) -> Path:
    """Install a one-module plugin into `folder` the way pip would: ``<module>.py`` holding `source`, and a
    ``.dist-info`` (distribution ``module`` with dashes, `version`) whose ``model_audit`` entry point `entry`
    names the module. Returns the folder (for PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(source)
    info = folder / f"{module}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    dist = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[model_audit]\n{entry} = {module}\n")
    (info / "top_level.txt").write_text(f"{module}\n")
    return folder


def install_external_plugin(folder: Path) -> Path:
    """Write the plugin module and its .dist-info into `folder`; return the folder (for PYTHONPATH)."""
    return install_plugin(folder, "audit_output_mean", PROBE_SOURCE, "0.3.0", "output_mean")
