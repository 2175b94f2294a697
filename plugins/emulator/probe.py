"""The `emulator` probe: does a fast emulator reproduce the simulation it replaces, within the reference covariance?

Nadler & To (UniverseMachine emulator, their Table 1) and the cosmology emulators (CosmoPower, EuclidEmulator,
baccoemu). One job takes one or more emulators (models), optionally a baseline emulator (``baseline``: e.g. a
random forest, a polynomial or a previous checkpoint), one or more test datasets whose inputs are simulation
parameters and whose targets are the simulation's outputs (n, bins), and one covariance dataset (``covariance``)
holding per-bin errors (one row), a full matrix (bins × bins) or simulation realisations (n_s × bins; the
unbiased sample covariance with the Hartlap factor, p-values from Hotelling's F). For every model × test dataset:

* χ²_i = h r_iᵀ Σ⁻¹ r_i per sample (r = reference − prediction in the comparison space; Cholesky solve), stored
  as ``chi2_mean`` normalised per bin as in the source, Σ_i χ²_i / Σ_i dof_i (= 1/(N_boxes N_bins) Σ_i χ²_i);
* the reduced χ² and p-value of each sample, the share failing at ``level``, the KS test of the p-values against
  U(0, 1) (calibration: an emulator whose residuals are the simulation's own noise gives uniform p-values);
* mean and RMS pull per bin (r_ij/σ_j; bias and scatter in units of each bin's error);
* fractional errors |prediction/reference − 1| (linear units) at the 68/95/99th percentiles, per bin and overall;
* with a baseline: the same for it, and the ratios emulator/baseline of ``chi2_mean`` and ``frac_err_p95``.

Spaces: ``stored`` says how targets, model outputs and realisations are stored (linear or log10), ``space``
where residuals are taken; per-bin errors and full matrices must be given in the comparison space. Values ≤ 0
going to log10 follow ``nonpositive`` (error, mask the bin for that sample, or floor).

Declaring the probe imports no NumPy, SciPy or torch (every command that reads audit.toml registers it);
the methods that compute import them.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from audit import Needs, Param, Probe, ProbeResult
from audit.api.errors import ProbeInputError
from model_audit_probes.emulator.choices import COVARIANCE_KINDS, NONPOSITIVE_RULES, SINGULAR_RULES, SPACES

if TYPE_CHECKING:
    import numpy as np

    from model_audit_probes.emulator import chi2


class EmulatorProbe(Probe):
    name = "emulator"
    version = "0.1.0"
    description = (
        "Emulator agreement with the simulation it replaces: χ² with a diagonal, full or simulation-estimated "
        "(Hartlap, Hotelling) covariance, reduced χ² and p-value per sample, calibration (KS of p-values), "
        "pulls per bin, fractional-error percentiles, and the ratio to a baseline emulator."
    )
    params = (
        Param(
            "covariance", str, "", "the job's dataset holding the covariance (errors, matrix or realisations)"
        ),
        Param(
            "covariance_kind",
            str,
            "auto",
            "how to read the covariance dataset (auto: 1 row = errors, symmetric bins×bins = matrix, else realisations)",
            choices=COVARIANCE_KINDS,
        ),
        Param("stored", str, "linear", "how targets, outputs and realisations are stored", choices=SPACES),
        Param("space", str, "stored", "where residuals are taken", choices=("stored", *SPACES)),
        Param(
            "nonpositive",
            str,
            "error",
            "values ≤ 0 going to log10: error, mask (drop the bin from that sample), floor",
            choices=NONPOSITIVE_RULES,
        ),
        Param("floor", float, 0.0, "the floor for nonpositive = 'floor' (stored units, > 0)", min=0),
        Param(
            "singular",
            str,
            "error",
            "a singular covariance: error, or pinv (pseudo-inverse on the supported subspace, dof = rank)",
            choices=SINGULAR_RULES,
        ),
        Param("rcond", float, 1e-10, "eigenvalues below rcond × the largest count as zero", min=0, max=1),
        Param("level", float, 0.05, "a sample fails when its p-value is below this level", min=0, max=1),
        Param(
            "baseline",
            str,
            "",
            "glob naming the job's baseline emulator (one model), compared with the others",
        ),
        Param("batch_size", int, 1024, "examples per forward pass", min=1),
    )
    needs = Needs(models=(1, None), datasets=(2, None))
    oom_param = "batch_size"  # forward-pass batches: memory only, the outputs are the same
    key_metrics = (
        "chi2_mean",
        "calibration_p_value",
        "fail_fraction",
        "frac_err_p95",
        "pull_bias_max",
        "chi2_mean_ratio",
    )

    # ------------------------------------------------------------------------------------------- run

    def run(self, ctx, params: dict[str, Any]) -> ProbeResult:
        import numpy as np

        from model_audit_probes.emulator import chi2

        cov_dataset, tests = self._split_datasets(ctx, params["covariance"])
        baseline, emulators = self._split_models(ctx, params["baseline"])
        stored = params["stored"]
        space = stored if params["space"] == "stored" else params["space"]
        if params["nonpositive"] == "floor" and not params["floor"] > 0:
            raise ValueError("params.floor: nonpositive = 'floor' needs floor > 0")
        convert = {"nonpositive": params["nonpositive"], "floor": params["floor"]}

        result = ProbeResult()
        cov: chi2.Covariance | None = None
        measured: dict[tuple[str, str], dict[str, float]] = {}
        for dataset in tests:
            if not dataset.has_targets:
                raise ProbeInputError(
                    f"dataset {dataset.name!r} has no targets: the simulation's outputs are the reference"
                )
            outputs = {m.name: ctx.model_outputs(m, dataset, params["batch_size"]) for m in ctx.models}
            targets = next(y for _, y in outputs.values())
            reference = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
            p = reference.shape[1]
            if cov is None:
                cov = self._covariance(ctx, cov_dataset, params, p, stored, space, convert)
                self._record_covariance(result, cov, space)
            elif cov.p != p:
                raise ProbeInputError(f"dataset {dataset.name!r} has {p} bins, the covariance {cov.p}")
            ref = chi2.to_space(reference, stored, space, what=f"targets of {dataset.name!r}", **convert)
            ref_lin = chi2.to_space(reference, stored, "linear")
            for m in ctx.models:
                out = np.asarray(outputs[m.name][0], dtype=np.float64)
                if out.shape != reference.shape:
                    raise ProbeInputError(
                        f"model {m.name!r} gives outputs of shape {out.shape} on {dataset.name!r}; "
                        f"the targets have shape {reference.shape}"
                    )
                pred = chi2.to_space(out, stored, space, what=f"outputs of {m.name!r}", **convert)
                pred_lin = chi2.to_space(out, stored, "linear")
                measured[m.name, dataset.name] = self._measure(
                    result, cov, ref - pred, pred_lin, ref_lin, m.name, dataset.name, params["level"]
                )
            if baseline is not None:
                base = measured[baseline.name, dataset.name]
                for m in emulators:
                    mine = measured[m.name, dataset.name]
                    for metric in ("chi2_mean", "frac_err_p95"):
                        ratio = mine[metric] / base[metric] if base[metric] > 0 else float("nan")
                        result.metric(f"{metric}_ratio", ratio, model=m.name, dataset=dataset.name)
        return result

    # ------------------------------------------------------------------------------------- helpers

    @staticmethod
    def _split_datasets(ctx, name: str):
        if not name:
            raise ValueError(
                "params.covariance: name the job's dataset that holds the covariance (per-bin errors, a matrix "
                "or simulation realisations)"
            )
        matches = [d for d in ctx.datasets if d.name == name]
        if not matches:
            names = ", ".join(d.name for d in ctx.datasets)
            raise ValueError(f"params.covariance: {name!r} is not one of the job's datasets ({names})")
        tests = [d for d in ctx.datasets if d.name != name]
        if not tests:
            raise ValueError("the job needs a test dataset besides the covariance dataset")
        return matches[0], tests

    @staticmethod
    def _split_models(ctx, pattern: str):
        if not pattern:
            return None, list(ctx.models)
        base = [m for m in ctx.models if fnmatch.fnmatchcase(m.name, pattern)]
        if len(base) != 1:
            names = ", ".join(m.name for m in ctx.models)
            raise ValueError(
                f"params.baseline: {pattern!r} matches {len(base)} of the job's models ({names}); it must match one"
            )
        emulators = [m for m in ctx.models if m is not base[0]]
        if not emulators:
            raise ValueError("params.baseline: the job has no emulator besides the baseline")
        return base[0], emulators

    @staticmethod
    def _covariance(ctx, dataset, params, p: int, stored: str, space: str, convert) -> chi2.Covariance:
        import numpy as np
        import torch

        from model_audit_probes.emulator import chi2

        rows = [x.cpu().numpy() for x, _ in dataset.batches(4096, torch.device("cpu"))]
        data = np.concatenate(rows).astype(np.float64)
        what = f"covariance dataset {dataset.name!r}"
        try:
            kind = chi2.resolve_kind(data, params["covariance_kind"], p)
            if kind == "realisations":  # simulation outputs: stored like the targets, moved to the same space
                data = chi2.to_space(data.reshape(len(data), -1), stored, space, what=what, **convert)
            return chi2.build_covariance(data, kind, p, params["singular"], params["rcond"])
        except ValueError as e:
            raise ProbeInputError(f"{what}: {e}") from None

    @staticmethod
    def _record_covariance(result: ProbeResult, cov: chi2.Covariance, space: str) -> None:
        import numpy as np

        from model_audit_probes.emulator import chi2

        result.metric("bins", cov.p)
        result.metric("covariance_rank", cov.rank)
        result.metric("covariance_condition", cov.condition)
        result.metric("hartlap_factor", cov.hartlap)
        if cov.n_realisations is not None:
            result.metric("n_realisations", cov.n_realisations)
        result.array("covariance", cov.matrix)
        result.array("sigma", cov.sigma)
        result.array("covariance_kind", np.array([cov.kind]))
        result.array("space", np.array([space]))
        result.array("percentiles", np.array(chi2.PERCENTILES))
        for w in cov.warnings:
            result.warn(w)

    @staticmethod
    def _measure(
        result: ProbeResult,
        cov: chi2.Covariance,
        residuals: np.ndarray,
        pred_lin: np.ndarray,
        ref_lin: np.ndarray,
        model: str,
        dataset: str,
        level: float,
    ) -> dict[str, float]:
        import numpy as np

        from model_audit_probes.emulator import chi2

        masked = ~np.isfinite(residuals)
        if masked.all(axis=1).any():
            raise ProbeInputError(
                f"model {model!r} on {dataset!r}: {int(masked.all(axis=1).sum())} sample(s) have every bin masked"
            )
        res = chi2.chi2_per_sample(residuals, cov)
        ks_stat, ks_p = chi2.calibration(res.p_values)
        pull_mean, pull_rms = chi2.pull_summary(chi2.pulls(residuals, cov.sigma))
        frac_bins, frac_all = chi2.percentiles(chi2.fractional_errors(pred_lin, ref_lin))
        values = {
            "chi2_mean": res.mean_per_bin,
            "chi2_reduced_median": float(np.median(res.reduced)),
            "fail_fraction": res.fail_fraction(level),
            "calibration_ks": ks_stat,
            "calibration_p_value": ks_p,
            "pull_bias_max": float(np.nanmax(np.abs(pull_mean))),
            "pull_rms_max": float(np.nanmax(pull_rms)),
            "pull_rms_mean": float(np.nanmean(pull_rms)),
            "n_samples": float(len(residuals)),
        }
        for q, v in zip(chi2.PERCENTILES, frac_all, strict=True):
            values[f"frac_err_p{q:g}"] = float(v)
        if masked.any():
            values["masked_fraction"] = float(masked.mean())
            result.warn(
                f"{model} on {dataset}: {int(masked.sum())} bin value(s) ≤ 0 masked (nonpositive = 'mask'); "
                "those samples' χ² have fewer dof"
            )
        for name, value in values.items():
            result.metric(name, value, model=model, dataset=dataset)
        key = f"{model}@{dataset}"
        result.array(f"{key}:chi2", res.chi2)
        result.array(f"{key}:reduced_chi2", res.reduced)
        result.array(f"{key}:p_values", res.p_values)
        result.array(f"{key}:pull_mean", pull_mean)
        result.array(f"{key}:pull_rms", pull_rms)
        result.array(f"{key}:frac_err_percentiles", frac_bins)
        return values
