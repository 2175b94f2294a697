"""The `trimmed_ks` probe: is a checkpoint meaningfully different from models trained the same way?

Banerjee, Marrinan, Cannon, Chiang & Sarwate (arXiv 2406.08307) on top of del Barrio, Inouzhe & Matrán
(2020). One job takes a reference ensemble (the job's models whose names match `reference`, e.g. the
family ``seed/*`` expanded from a glob of checkpoints) and candidates (the job's other models) on one
test dataset, and reports for each candidate α̂ — the smallest share of its score distribution that must
be trimmed away before a KS test accepts it as a sibling — beside accuracy, churn and ECE.

Design choices (documented in the README too):

* **Disjoint halves** (``split = "halves"``, the default): a seeded half of the test set gives the
  candidate's scores, the other half the reference's pooled scores. The KS null distribution assumes two
  independent samples; scores of different models on the *same* inputs are paired (siblings agree on easy
  examples), which makes the eCDFs closer than independent samples would be and biases α̂ low.
  ``split = "same"`` uses every example on both sides (more data, the bias above).
* **Pooling**: the reference eCDF F0 pools every reference model's scores on its half. Its size m counts
  model × example pairs, which overstates the independent information (the examples are shared), so the
  threshold rules that use m are slightly optimistic about F0; the candidate's n dominates them anyway.
* **The candidate is never in its own reference**; with ``leave_one_out`` every reference model is also
  scored against the others, which gives the spread of α̂ *within* seed variability — the natural scale
  for a gate such as ``alpha_hat <= 0.1``.
* **Outputs are cached per (model, dataset)** in the catalog (``Context.model_outputs``), so adding a
  candidate recomputes only the candidate's forward passes.

Declaring the probe imports no NumPy or SciPy (every command that reads audit.toml registers it); the
methods that compute import them.
"""

from __future__ import annotations

import fnmatch
import math
from typing import TYPE_CHECKING, Any

from audit import Needs, Param, Probe, ProbeResult
from model_audit_probes.trimmed_ks.choices import ECE_VARIANTS, RULES, SCORES, SPLITS

if TYPE_CHECKING:
    import numpy as np


class TrimmedKSProbe(Probe):
    name = "trimmed_ks"
    version = "0.2.0"
    description = (
        "Seed-to-seed variability: α̂, the minimal trimming at which a Kolmogorov–Smirnov test accepts a "
        "candidate's score distribution as that of a reference ensemble trained alike (exact trimmed KS), "
        "beside accuracy, churn against each reference model and the ensemble, and ECE."
    )
    params = (
        Param("reference", str, "", "glob over the job's model names that form the reference ensemble"),
        Param("score", str, "auto", "the scores compared (see the README)", choices=SCORES),
        Param("rule", str, "ks_asymptotic", "threshold rule of the KS test", choices=RULES),
        Param("level", float, 0.0, "the test's level ε (0: the rule's default, 5 % or 1 %)", min=0, max=0.5),
        Param(
            "split", str, "halves", "disjoint halves of the test set, or the same examples", choices=SPLITS
        ),
        Param("leave_one_out", bool, True, "also score each reference model against the others"),
        Param("ece_bins", int, 15, "equal-width bins of the ECE", min=2),
        Param("ece_variant", str, "top_label", "ECE variant", choices=ECE_VARIANTS),
        Param("batch_size", int, 512, "examples per forward pass", min=1),
    )
    needs = Needs(models=(2, None), datasets=(1, 1))
    oom_param = "batch_size"  # forward-pass batches: memory only, the outputs are the same
    key_metrics = ("alpha_hat", "d_alpha_limit", "accuracy", "churn_mean", "churn_ensemble", "ece")

    def run(self, ctx, params: dict[str, Any]) -> ProbeResult:
        import numpy as np

        from model_audit_probes.trimmed_ks import dalpha, metrics

        pattern = params["reference"]
        if not pattern:
            raise ValueError("params.reference: name the reference ensemble, e.g. reference = 'seed/*'")
        reference = [m for m in ctx.models if fnmatch.fnmatchcase(m.name, pattern)]
        candidates = [m for m in ctx.models if m not in reference]
        if len(reference) < 2:
            raise ValueError(
                f"params.reference: {pattern!r} matches {len(reference)} of the job's models "
                f"({', '.join(m.name for m in ctx.models)}); the reference needs at least 2"
            )
        dataset = ctx.datasets[0]
        outputs: dict[str, np.ndarray] = {}
        targets = None
        for m in ctx.models:
            out, y = ctx.model_outputs(m, dataset, params["batch_size"])
            outputs[m.name] = np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
            targets = y if y is not None else targets
        n = dataset.n
        n_outputs = next(iter(outputs.values())).shape[1]
        if targets is not None:
            targets = np.asarray(targets).reshape(-1).astype(np.int64)
        kind = metrics.resolve_score(params["score"], n_outputs, targets is not None)
        score = {name: metrics.scores(z, kind, targets) for name, z in outputs.items()}
        if params["split"] == "halves":
            perm = ctx.rng.permutation(n)
            cand_idx, ref_idx = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
        else:
            cand_idx = ref_idx = np.arange(n)

        result = ProbeResult()
        result.array("score_kind", np.array([kind]))  # the resolved choice, stored with the result
        result.array("reference_models", np.array([m.name for m in reference]))
        level = params["level"] or None
        ref_names = [m.name for m in reference]
        curve_alphas = np.linspace(0.0, 0.5, 51)  # where each stored d_α curve is evaluated

        def measure(name: str, refs: list[str]) -> float:
            x = score[name][cand_idx]
            pooled = np.concatenate([score[r][ref_idx] for r in refs])
            problem = dalpha.TrimmedKS(x, pooled)
            a_hat = dalpha.alpha_hat(x, params["rule"], pooled, level=level)
            result.metric("alpha_hat", a_hat, model=name)
            result.metric("ks_distance", problem.distance(0.0), model=name)
            result.metric("d_alpha_limit", problem.limit(), model=name)
            result.metric(
                "ks_threshold", dalpha.threshold(params["rule"], len(x), len(pooled), level), model=name
            )
            result.array(f"{name}:d_alpha", problem.curve(curve_alphas))
            result.array(f"{name}:scores", x)
            if not math.isfinite(a_hat) or a_hat >= 1.0:
                result.warn(
                    f"{name}: α̂ = 1, no trimming makes it pass: the reference has mass where it has none "
                    f"(d_α stays ≥ {problem.limit():.3f}; trimming can only discard the candidate's surplus)"
                )
            else:
                result.array(f"{name}:trimming", problem.trimming(a_hat))
            self._companions(result, name, refs, outputs, targets, params)
            return a_hat

        result.array("reference:scores", np.concatenate([score[r][ref_idx] for r in ref_names]))
        result.array("d_alpha:alphas", curve_alphas)
        null = []
        if params["leave_one_out"]:
            for r in ref_names:
                null.append(measure(r, [o for o in ref_names if o != r]))
            result.metric("null_alpha_hat_mean", float(np.mean(null)))
            result.metric("null_alpha_hat_max", float(np.max(null)))
        for c in candidates:
            a_hat = measure(c.name, ref_names)
            if null:
                result.metric("alpha_hat_over_null_max", a_hat - float(np.max(null)), model=c.name)
        return result

    @staticmethod
    def _companions(result, name, refs, outputs, targets, params) -> None:
        import numpy as np

        from model_audit_probes.trimmed_ks import metrics

        pred = metrics.predictions(outputs[name])
        churns = [metrics.churn(pred, metrics.predictions(outputs[r])) for r in refs]
        result.metric("churn_mean", float(np.mean(churns)), model=name)
        result.metric("churn_min", float(np.min(churns)), model=name)
        result.metric("churn_max", float(np.max(churns)), model=name)
        result.metric(
            "churn_ensemble",
            metrics.churn(pred, metrics.ensemble_predictions([outputs[r] for r in refs])),
            model=name,
        )
        if targets is not None:
            result.metric("accuracy", metrics.accuracy(pred, targets), model=name)
            probs = metrics.probabilities(outputs[name])
            if params["ece_variant"] == "top_label" or probs.shape[1] == 2:
                result.metric(
                    "ece",
                    metrics.expected_calibration_error(
                        probs, targets, params["ece_bins"], params["ece_variant"]
                    ),
                    model=name,
                )
