"""The `embedding` probe: can a model, used as an instrument, tell data sources apart?

Vargas et al. (arXiv 2408.10437), as presented by Sarwate: embed data from two or more sources with a large
model, then ask — with measurements, not only pictures — whether the sources separate and which principal
components track which known labels. Each dataset of the job is one source; a dataset's targets, when it has
them, are a hidden label to correlate with the components. With no model, the datasets' inputs *are* the
embeddings (precomputed arrays).

Pipeline (one pass over the data; see :mod:`.extract`): every batch feeds an exact streaming PCA (float64
scatter; on the kept rows instead when d exceeds :data:`stats.MAX_SCATTER_DIM`) and a seeded subsample of at
most `keep_per_source` rows per source is kept. On the kept rows: LDA, cross-validated accuracy of predicting
the source (LDA with a permutation p-value, and logistic regression), the Fisher ratio of held-out points on
the LDA projection, the silhouette, a kernel two-sample test (MMD, Gaussian kernel, median-heuristic bandwidth
as alibi-detect's MMDDrift, permutation p-value) for every pair of sources, and component–label associations.
With `null_control` each source is also split into two random halves and the same tests are run between
them: the A-vs-A control, which must *not* separate.

Declaring the probe imports no NumPy, SciPy or torch (every command that reads audit.toml registers it);
the methods that compute import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from audit import Needs, Param, Probe, ProbeResult
from audit.api.errors import ProbeInputError
from model_audit_probes.embedding.choices import POOLINGS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from model_audit_probes.embedding import extract


class EmbeddingProbe(Probe):
    name = "embedding"
    version = "0.1.0"
    description = (
        "Embedding forensics: streamed PCA, LDA, cross-validated source prediction (LDA with a permutation "
        "p-value, logistic regression), MMD two-sample tests per pair of sources, Fisher ratio, silhouette and "
        "component–label associations, with an A-vs-A null control."
    )
    params = (
        Param("layer", str, "output", "module whose output is the embedding ('output': the model's output)"),
        Param("pooling", str, "mean", "pooling of (batch, seq, d) outputs", choices=POOLINGS),
        Param(
            "keep_per_source", int, 2000, "rows per source kept for LDA, CV, MMD, silhouette, plots", min=10
        ),
        Param("components", int, 10, "principal components reported", min=1),
        Param("folds", int, 5, "cross-validation folds", min=2),
        Param("permutations", int, 100, "label permutations of the LDA accuracy test", min=1),
        Param("mmd_permutations", int, 500, "permutations of each MMD test", min=1),
        Param("mmd_max_n", int, 1000, "rows per source in each MMD test", min=4),
        Param("logistic", bool, True, "also cross-validate a logistic regression"),
        Param("null_control", bool, True, "run the tests between two random halves of each source too"),
        Param("batch_size", int, 256, "examples per forward pass", min=1),
    )
    needs = Needs(models=(0, 1), datasets=(2, None))
    oom_param = "batch_size"  # forward-pass batches: memory only, the outputs are the same
    key_metrics = (
        "lda_cv_accuracy",
        "lda_p_value",
        "logistic_cv_accuracy",
        "chance_accuracy",
        "mmd_p_value",
        "null_mmd_p_value",
        "fisher_ratio",
        "silhouette",
        "pca_top_source_eta",
    )

    def run(self, ctx, params: dict[str, Any]) -> ProbeResult:
        import numpy as np

        from model_audit_probes.embedding import extract, stats

        seed = ctx.seed
        result = ProbeResult()
        names = [d.name for d in ctx.datasets]
        total = sum(d.n for d in ctx.datasets)
        bar = ctx.progress(total, "embedding the sources")
        pca_acc = stats.StreamingPCA(device=ctx.device)
        too_wide = False
        width = 0
        samples: list[extract.Sample] = []
        for d in ctx.datasets:
            keep = extract.keep_indices(d.n, params["keep_per_source"], ctx.rng)

            def on_batch(emb: torch.Tensor, name: str = d.name) -> None:
                nonlocal too_wide, width
                width = width or emb.shape[1]
                if emb.shape[1] != width:
                    raise ProbeInputError(
                        f"the sources have embeddings of different widths: {width} and {emb.shape[1]} ({name})"
                    )
                too_wide = too_wide or emb.shape[1] > stats.MAX_SCATTER_DIM
                if not too_wide:
                    pca_acc.update(emb)
                bar.advance(emb.shape[0])

            samples.append(extract.collect(self._embeddings(ctx, d, params), d.n, keep, on_batch))
            result.metric("rows", d.n, dataset=d.name)
        dim = width
        x = np.concatenate([s.x for s in samples])
        y = np.concatenate([np.full(len(s.x), i) for i, s in enumerate(samples)])
        k = min(params["components"], dim)
        if too_wide:
            result.warn(
                f"d = {dim} > {stats.MAX_SCATTER_DIM}: PCA of the kept rows (randomized), not of all rows"
            )
            pca = stats.randomized_pca(lambda: [x], k, seed=seed, device=ctx.device)
        else:
            pca = pca_acc.result(k)
        result.metric("dimension", dim)
        for j, share in enumerate(pca.explained_variance_ratio[:3], start=1):
            result.metric(f"pca_var_ratio_{j}", share)
        result.array("pca_explained_variance_ratio", pca.explained_variance_ratio)
        result.array("pca_explained_variance", pca.explained_variance)
        scores = np.asarray(stats.project(x, pca.mean, pca.components))
        result.array("pca_2d", scores[:, :2])
        result.array("source", y)
        result.array("source_names", np.array(names))

        self._separation(result, x, y, names, params, seed, ctx.device)
        self._associations(result, scores, y, samples)
        if params["null_control"]:
            self._null_control(result, samples, names, params, seed, ctx.device)
        return result

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _embeddings(ctx, dataset, params):
        """Batches of (embeddings (b, d) on the device, targets) for one source."""
        from model_audit_probes.embedding import extract

        if not ctx.models:  # precomputed embeddings: the dataset's inputs
            for xb, yb in dataset.batches(params["batch_size"], ctx.device):
                yield extract.pool(xb.float(), params["pooling"]), yb
            return
        model = ctx.models[0]
        layers = ctx.resolve_layers(model, [params["layer"]])
        if len(layers) != 1:
            raise ProbeInputError(
                f"layer {params['layer']!r} matches {len(layers)} modules; name exactly one"
            )
        for acts, _out, yb in ctx.activations(model, dataset, layers, params["batch_size"]):
            yield extract.pool(acts[0].float(), params["pooling"]), yb

    @staticmethod
    def _separation(result, x, y, names, params, seed, device) -> None:
        import numpy as np

        from model_audit_probes.embedding import stats

        counts = np.bincount(y)
        result.metric("chance_accuracy", counts.max() / counts.sum())
        perm = stats.permutation_test(
            x, y, "lda", params["folds"], params["permutations"], seed, device=device
        )
        result.metric("lda_cv_accuracy", perm.accuracy)
        result.metric("lda_p_value", perm.p_value)
        result.array("lda_null_accuracy", perm.null)
        if params["logistic"]:
            cv = stats.cv_accuracy(x, y, "logistic", params["folds"], seed, device=device)
            result.metric("logistic_cv_accuracy", cv.accuracy)
        result.metric("fisher_ratio", stats.fisher_ratio_cv(x, y, params["folds"], seed, device=device).ratio)
        result.metric("silhouette", stats.silhouette(x, y, seed=seed, device=device))
        lda = stats.lda_fit(x, y, device=device)
        result.array("lda_2d", stats.lda_transform(lda, x)[:, :2])
        result.array("lda_explained_variance_ratio", lda.explained_variance_ratio)
        sources = {name: x[y == i] for i, name in enumerate(names)}
        tests = stats.pairwise_mmd(
            sources, params["mmd_permutations"], seed=seed, max_n=params["mmd_max_n"], device=device
        )
        worst = 0.0
        for (a, b), t in tests.items():
            pair = f"{a},{b}"
            result.metric("mmd2", t.mmd2, dataset=pair)
            result.metric("mmd_p_value", t.p_value, dataset=pair)
            result.metric("mmd_bandwidth", t.bandwidth, dataset=pair)
            worst = max(worst, t.p_value)
        result.metric("mmd_p_value_max", worst)  # the least separated pair

    @staticmethod
    def _associations(result, scores, y, samples) -> None:
        import numpy as np

        from model_audit_probes.embedding import stats

        labels: dict[str, np.ndarray] = {"source": y}
        if all(s.targets is not None for s in samples):
            labels["target"] = np.concatenate([s.targets for s in samples])
        found = stats.component_label_association(scores, labels)
        for label, assoc in found.items():
            result.array(f"association_{label}", assoc.statistic)
            result.array(f"association_{label}_p_value", assoc.p_value)
        eta = np.abs(found["source"].statistic)
        result.metric("pca_top_source_eta", float(eta.max()))
        result.metric("pca_top_source_component", float(eta.argmax() + 1))

    @staticmethod
    def _null_control(result, samples, names, params, seed, device) -> None:
        """Two random halves of each source: the same tests must find nothing (A vs A)."""
        import numpy as np

        from model_audit_probes.embedding import stats

        rng = np.random.default_rng(seed + 1)
        for s, name in zip(samples, names, strict=True):
            if len(s.x) < 2 * params["folds"]:
                result.warn(f"{name}: too few kept rows for the null control")
                continue
            half = rng.permutation(len(s.x)) < len(s.x) // 2
            xa, xb = s.x[half], s.x[~half]
            t = stats.mmd_test(
                xa, xb, params["mmd_permutations"], seed=seed, max_n=params["mmd_max_n"], device=device
            )
            result.metric("null_mmd_p_value", t.p_value, dataset=name)
            yy = np.concatenate([np.zeros(len(xa), int), np.ones(len(xb), int)])
            cv = stats.cv_accuracy(np.concatenate([xa, xb]), yy, "lda", params["folds"], seed, device=device)
            result.metric("null_lda_cv_accuracy", cv.accuracy, dataset=name)
