"""The `entk` probe: what kernel does the trained network implement, what do its spectra say about how
it was trained, and how faithful is a kernel surrogate of it?

Datasets, in order: the kernel's reference set (the training set of the surrogates), then optionally an
in-distribution test set, then optionally an out-of-distribution test set. A seeded subset of at most
``max_examples`` examples of each is used: the kernels are n×n.

Declaring the probe imports no NumPy, SciPy or torch (every command that reads audit.toml registers it);
the methods that compute import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from audit import Needs, Param, Probe, ProbeResult
from audit.api.errors import ProbeInputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from model_audit_probes.entk import kernels

MODES = ("exact", "projected", "subsampled")
PRECISIONS = ("float32", "float64")  # the keys of kernels.PRECISIONS (tests/test_entk_probe.py checks)


def _parse_output(value: str) -> kernels.Output:
    """'trace', 'sum' or a logit index; a negative index counts from the last logit ('-1': the last)."""
    if value in ("trace", "sum"):
        return value
    try:
        return int(value)
    except ValueError:
        raise ProbeInputError(f"output must be 'trace', 'sum' or a logit index, got {value!r}") from None


class ENTKProbe(Probe):
    name = "entk"
    # 0.2.1: the kernels are exact on models that write layer outputs in place (ReLU(inplace=True),
    # `out += identity`); 0.2.0 results of such models were wrong, and the version keys the result cache.
    # 0.3.0: `precision` (float32/float64); `memory_budget_mb = 0` (the default) sizes it from the device.
    version = "0.3.0"
    description = (
        "Empirical NTK (trace/single-output/pNTK; exact with dense-layer factorisation, projected or "
        "parameter-subsampled), conjugate kernel and weight spectra (Marchenko–Pastur edge, spikes, tail "
        "exponent), and kernel surrogates: trNTK kGLM faithfulness (TAD, Kendall τ, R_Miss) and eNTK kernel "
        "regression accuracy in and out of distribution."
    )
    params = (
        Param("max_examples", int, 512, "examples drawn (seeded) from each dataset; kernels are n×n", min=8),
        Param("output", str, "trace", "'trace' (sum over classes), 'sum' (pNTK) or a logit index"),
        Param(
            "mode", str, "exact", "exact kernel, random projection, or parameter subsampling", choices=MODES
        ),
        Param("projection_dim", int, 4096, "k of the random projection (mode = projected)", min=1),
        Param(
            "subsample_params", int, 500_000, "parameters kept (mode = subsampled; Campbell et al.)", min=1
        ),
        Param("l2", float, 1e-3, "L2 penalty of the kGLM (on standardised trNTK features)", min=0),
        Param("ridge", float, 1e-3, "kernel-regression ridge, relative to the kernel's mean diagonal", min=0),
        Param("weight_spectra", bool, True, "eigen-spectra of every weight matrix"),
        Param(
            "attribution_top_k", int, 5, "training points attributed to each of the first test points", min=0
        ),
        Param(
            "memory_budget_mb",
            int,
            0,
            "memory for the per-sample gradients alive at once; 0: from the device (CUDA: a quarter of its "
            "free memory; CPU: 1024)",
            min=0,
        ),
        Param(
            "precision",
            str,
            "float32",
            "dtype the model runs in and the Jacobians are contracted in for the kernels (float64: a converted "
            "copy of the model; the network's own outputs stay as loaded)",
            choices=PRECISIONS,
        ),
    )
    needs = Needs(models=(1, 1), datasets=(1, 3))
    key_metrics = (
        "ntk_effective_rank",
        "ntk_top_share",
        "ntk_alignment",
        "ck_effective_rank",
        "weight_spikes_max",
        "kglm_tad",
        "kglm_kendall_tau",
        "kglm_r_miss",
        "kernel_regression_accuracy",
        "network_accuracy",
    )

    # ------------------------------------------------------------------ run

    def run(self, ctx, params: dict[str, Any]) -> ProbeResult:
        import numpy as np
        import torch

        from model_audit_probes.entk import kernels

        result = ProbeResult()
        handle = ctx.models[0]
        model = handle.load()
        output = _parse_output(params["output"])
        xs, ys = [], []
        for d in ctx.datasets:
            x, y = self._sample(ctx, d, params["max_examples"])
            xs.append(x)
            ys.append(y)
        sizes = [x.shape[0] for x in xs]
        x_all = torch.cat(xs)
        bar = ctx.progress(4, f"entk {handle.name}")

        with torch.no_grad():
            logits = model(x_all).reshape(x_all.shape[0], -1).double()
        # the kernels' model: the loaded one, or one converted copy of it for both kernels (never in place)
        kernel_model = kernels.at_precision(model, params["precision"])
        k_all = self._kernel(kernel_model, x_all, output, params, ctx.seed).double()
        bar.advance(1)
        ck = kernels.conjugate_kernel(kernel_model, x_all, precision=params["precision"]).double()
        bar.advance(1)
        del kernel_model

        train = slice(0, sizes[0])
        y_train = ys[0]
        self._kernel_metrics(result, "ntk", k_all[train, train], y_train, ctx.datasets[0].name)
        self._kernel_metrics(result, "ck", ck[train, train], y_train, ctx.datasets[0].name)
        if params["weight_spectra"]:
            self._weight_metrics(result, model)
        bar.advance(1)

        if len(xs) > 1:
            if y_train is None or ctx.datasets[0].task != "classification":
                result.warn("surrogates need classification targets on the first dataset; skipped")
            else:
                self._surrogates(result, ctx, params, k_all, logits, sizes, ys)
        bar.advance(1)
        result.array("sizes", np.array(sizes))
        return result

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _sample(ctx, d, m: int) -> tuple[torch.Tensor, np.ndarray | None]:
        """A seeded subset of at most m examples, gathered while streaming the dataset once."""
        import numpy as np
        import torch

        chosen = np.sort(ctx.rng.choice(d.n, size=min(m, d.n), replace=False))
        xs, ys, start = [], [], 0
        for x, y in d.batches(1024, ctx.device):
            idx = chosen[(chosen >= start) & (chosen < start + x.shape[0])] - start
            if idx.size:
                t = torch.as_tensor(idx, device=x.device)
                xs.append(x[t])
                if y is not None:
                    ys.append(y[t].cpu())
            start += x.shape[0]
        y_all = torch.cat(ys).numpy() if ys else None
        return torch.cat(xs), y_all

    @staticmethod
    def _kernel(model, x, output, params, seed) -> torch.Tensor:
        from model_audit_probes.entk import kernels

        budget = (params["memory_budget_mb"] << 20) or None  # None: kernels.default_budget(x.device)
        common = {"output": output, "memory_budget": budget, "precision": params["precision"]}
        if params["mode"] == "exact":
            return kernels.empirical_ntk(model, x, **common)
        if params["mode"] == "projected":
            f = kernels.projected_gradients(model, x, params["projection_dim"], seed=seed, **common)
        else:
            f = kernels.subsampled_gradients(model, x, params["subsample_params"], seed=seed, **common)
        return kernels.kernel_from_features(f)

    @staticmethod
    def _kernel_metrics(result: ProbeResult, prefix: str, k: torch.Tensor, y, dataset: str) -> None:
        from model_audit_probes.entk import spectra

        metrics, arrays = spectra.kernel_spectrum(k.cpu().numpy(), y)
        for name, value in metrics.items():
            result.metric(f"{prefix}_{name}", value)
        for name, value in arrays.items():
            result.array(f"{prefix}_{name}", value)

    @staticmethod
    def _weight_metrics(result: ProbeResult, model: torch.nn.Module) -> None:
        import numpy as np

        from model_audit_probes.entk import spectra

        spikes, alphas = [], []
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue
            w = p.detach().reshape(p.shape[0], -1).double().cpu().numpy()
            metrics, eigenvalues = spectra.weight_spectrum(w)
            for key, value in metrics.items():
                result.metric(f"w[{name}].{key}", value)
            result.array(f"w[{name}].eigenvalues", eigenvalues)
            spikes.append(metrics.get("spikes", np.nan))
            alphas.append(metrics.get("alpha", np.nan))
        if spikes:
            result.metric("weight_spikes_max", float(np.nanmax(spikes)))
            result.metric("weight_spikes_total", float(np.nansum(spikes)))
        if alphas and np.isfinite(alphas).any():
            result.metric("weight_alpha_min", float(np.nanmin(alphas)))

    def _surrogates(self, result, ctx, params, k_all, logits, sizes, ys) -> None:
        import numpy as np
        import torch

        from model_audit_probes.entk import kernels, surrogates

        n_classes = logits.shape[1]
        bounds = np.cumsum([0, *sizes])
        train = slice(bounds[0], bounds[1])
        y_train = ys[0]
        diag = k_all.diagonal()
        tr = kernels.normalise(k_all, diag).cpu().numpy()
        kglm = surrogates.fit_kglm(tr[train, train], y_train, n_classes, l2=params["l2"])
        k_np = k_all.cpu().numpy()
        ridge = params["ridge"] * float(np.mean(np.diag(k_np)[train]))
        alpha = surrogates.kernel_ridge(k_np[train, train], surrogates.one_hot(y_train, n_classes), ridge)
        nn_proba = torch.softmax(logits, dim=1).cpu().numpy()
        for i, d in enumerate(ctx.datasets[1:], start=1):
            part = slice(bounds[i], bounds[i + 1])
            y = ys[i]
            if y is None:
                result.warn(f"{d.name}: no targets; surrogate accuracy skipped")
                continue
            sur = kglm.predict_proba(tr[part, train])
            for key, value in surrogates.faithfulness(nn_proba[part], sur, y).items():
                if not isinstance(value, str):  # the τ convention is documented, not a number
                    result.metric(f"kglm_{key}", value, dataset=d.name)
            pred = surrogates.kernel_ridge_predict(k_np[part, train], alpha).argmax(1)
            result.metric("kernel_regression_accuracy", float((pred == y).mean()), dataset=d.name)
            result.metric("network_accuracy", float((nn_proba[part].argmax(1) == y).mean()), dataset=d.name)
            if i == 1 and params["attribution_top_k"]:
                rows = tr[part, train][: min(8, sizes[i])]
                idx, contrib = surrogates.attribution(kglm, rows, params["attribution_top_k"])
                result.array("attribution_indices", np.asarray(idx))
                result.array("attribution_contributions", np.asarray(contrib))
