"""The `cka` probe: layer×layer linear CKA (unbiased minibatch HSIC) of one model, ID vs OOD, or A vs B.

Declaring the probe imports no NumPy, SciPy or torch (every command that reads audit.toml registers it);
the methods that compute import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from audit import Needs, Param, Probe, ProbeResult
from audit.api.capture import SEQUENCE_RULES
from audit.api.errors import ProbeInputError
from model_audit_probes.cka.choices import ESTIMATORS, GRAM_DTYPES

if TYPE_CHECKING:
    import numpy as np


class CKAProbe(Probe):
    name = "cka"
    version = "1.1.0"
    description = (
        "Layer×layer linear CKA with the unbiased minibatch HSIC (Nguyen, Raghu & Kornblith 2021): one model "
        "on one dataset, one model on in-distribution then out-of-distribution data (both matrices and their "
        "contrast, Gondhalekar et al.), or model A against model B on the same data."
    )
    params = (
        Param(
            "layers",
            list,
            [],
            "module names or globs; empty = every module with parameters that the forward pass calls, "
            "plus 'output'",
        ),
        Param(
            "sequence",
            str,
            "flatten",
            "how a (batch, tokens, d) activation becomes one row per example: flatten (tokens·d), mean over "
            "tokens, first or last token; conv maps are always flattened",
            choices=SEQUENCE_RULES,
        ),
        Param("batch_size", int, 256, "examples per minibatch (the HSIC estimate's batch)", min=4),
        Param(
            "estimator",
            str,
            "unbiased",
            "HSIC estimator; 'biased' depends on the batch size",
            choices=ESTIMATORS,
        ),
        Param(
            "gram_dtype",
            str,
            "float32",
            "dtype of the Gram products (centring and sums are float64)",
            choices=GRAM_DTYPES,
        ),
        Param(
            "eigenvalues", int, 3, "how many leading eigenvalues of the CKA matrix to store as metrics", min=0
        ),
    )
    needs = Needs(models=(1, 2), datasets=(1, 2))
    key_metrics = (
        "accuracy",
        "r2_mean",
        "offdiag_mean",
        "offdiag_skew",
        "eig_1_share",
        "effective_rank",
        "delta_offdiag_mean",
        "delta_offdiag_skew",
        "delta_eig_1_share",
        "cross_mean",
        "cross_diag_mean",
    )

    def check_job(self, n_models: int, n_datasets: int) -> str | None:
        if n_models == 2 and n_datasets == 2:
            return (
                "cka compares two models on one dataset, or one model on an in-distribution and an "
                "out-of-distribution dataset, not both in one job; use two [[probes]] entries"
            )
        return None

    def run(self, ctx, params: dict[str, Any]) -> ProbeResult:
        result = ProbeResult()
        bs = params["batch_size"]
        total = sum(-(-d.n // bs) for d in ctx.datasets)
        progress = ctx.progress(total, f"cka {','.join(m.name for m in ctx.models)}")
        if len(ctx.models) == 2:
            self._cross(ctx, params, result, progress)
        else:
            self._single(ctx, params, result, progress)
        return result

    # ---------------------------------------------------------------- one model, one or two datasets

    def _single(self, ctx, params, result: ProbeResult, progress) -> None:
        import numpy as np

        from model_audit_probes.cka.summary import spectrum, summarise

        model = ctx.models[0]
        layers = ctx.resolve_layers(model, params["layers"], ctx.datasets[0])
        result.array("layers", np.array(layers, dtype=object))
        summaries = []
        for d in ctx.datasets:
            acc, score = self._accumulate(ctx, params, model, None, d, layers, None, progress)
            matrix = acc.matrix()
            bad = self._flag(result, layers, acc.self_a, d.name)
            s = summarise(matrix, params["eigenvalues"])
            s["nonpositive_self_hsic_layers"] = float(bad)
            s["examples_used"] = float(acc.examples)
            summaries.append(s)
            suffix = "" if len(ctx.datasets) == 1 else f"_{d.name}"
            result.array("matrix" + suffix, matrix)
            result.array("eigenvalues" + suffix, spectrum(matrix))
            result.array("hsic_sums" + suffix, acc.cross)
            result.array("batches" + suffix, np.array([acc.batches, acc.examples]))
            attribute = d.name if len(ctx.datasets) > 1 else None
            for k, v in s.items():
                result.metric(k, v, dataset=attribute)
            for k, v in (score.metrics() if score else {}).items():
                result.metric(k, v, dataset=attribute)
            if score and score.problem:
                result.warn(f"{d.name}: {score.problem}")
        if len(ctx.datasets) == 2:  # in-distribution first, out-of-distribution second
            (id_s, ood_s), (id_d, ood_d) = summaries, ctx.datasets
            for k in id_s:
                if k not in ("layers", "examples_used"):
                    result.metric(f"delta_{k}", ood_s[k] - id_s[k])
            m_id = result.arrays[f"matrix_{id_d.name}"]
            m_ood = result.arrays[f"matrix_{ood_d.name}"]
            result.metric("frobenius_delta", float(np.sqrt(np.nansum((m_ood - m_id) ** 2)) / m_id.shape[0]))

    # ---------------------------------------------------------------- two models, one dataset

    def _cross(self, ctx, params, result: ProbeResult, progress) -> None:
        import numpy as np

        from model_audit_probes.cka.summary import cross_summary

        (a, b), d = ctx.models, ctx.datasets[0]
        layers_a = ctx.resolve_layers(a, params["layers"], d)
        layers_b = ctx.resolve_layers(b, params["layers"], d)
        acc, scores = self._accumulate(ctx, params, a, b, d, layers_a, layers_b, progress)
        bad = self._flag(result, layers_a, acc.self_a, f"{d.name} ({a.name})")
        bad += self._flag(result, layers_b, acc.self_b, f"{d.name} ({b.name})")
        result.metric("nonpositive_self_hsic_layers", float(bad))
        result.metric("examples_used", float(acc.examples))
        matrix = acc.matrix()
        result.array("matrix", matrix)
        result.array("layers_a", np.array(layers_a, dtype=object))
        result.array("layers_b", np.array(layers_b, dtype=object))
        result.array("hsic_sums", acc.cross)
        result.array("hsic_self_a", acc.self_a)
        result.array("hsic_self_b", acc.self_b)
        for k, v in cross_summary(matrix).items():
            result.metric(k, v)
        for handle, score in zip((a, b), scores or (None, None), strict=True):
            for k, v in (score.metrics() if score else {}).items():
                result.metric(k, v, model=handle.name)

    # ---------------------------------------------------------------- streaming

    def _accumulate(self, ctx, params, a, b, d, layers_a, layers_b, progress):
        import torch

        from audit.api.capture import features
        from model_audit_probes.cka.hsic import MinibatchCKA
        from model_audit_probes.cka.summary import TaskScore

        gram_dtype = getattr(torch, params["gram_dtype"])  # a name of GRAM_DTYPES
        acc = MinibatchCKA(
            len(layers_a), None if b is None else len(layers_b), params["estimator"], gram_dtype
        )
        task = d.task if d.has_targets else None
        scores = None if task is None else (TaskScore(task), TaskScore(task))
        stream_a = ctx.activations(a, d, layers_a, params["batch_size"])
        stream_b = ctx.activations(b, d, layers_b, params["batch_size"]) if b is not None else None
        min_batch = 4 if params["estimator"] == "unbiased" else 2
        rule = params["sequence"]
        for acts_a, out_a, y in stream_a:
            acts_a = [features(t, rule) for t in acts_a]
            acts_b, out_b = (None, None)
            if stream_b is not None:
                acts_b, out_b, _ = next(stream_b)
                acts_b = [features(t, rule) for t in acts_b]
            if scores is not None and y is not None:
                scores[0].update(out_a, y)
                if out_b is not None:
                    scores[1].update(out_b, y)
            if acts_a[0].shape[0] >= min_batch:  # a trailing batch too small for the estimator is skipped
                acc.update(acts_a, acts_b)
            progress.advance(1)
        if acc.batches == 0:
            raise ProbeInputError(f"dataset {d.name!r} has {d.n} examples; cka needs at least {min_batch}")
        if b is None:
            return acc, (scores[0] if scores else None)
        return acc, scores

    @staticmethod
    def _flag(result: ProbeResult, layers: list[str], self_hsic: np.ndarray, where: str) -> int:
        bad = [name for name, v in zip(layers, self_hsic, strict=True) if not v > 0]
        if bad:
            result.warn(
                f"{where}: non-positive self-HSIC (constant or degenerate activations) for layer(s) "
                f"{', '.join(bad)}; their CKA is undefined and stored as NaN"
            )
        return len(bad)
