# %% [markdown]
# # model-audit from Python: probes on in-memory models, a catalog as data frames
#
# Run it as a script (`python notebook.py`, about 15 s on 2 CPU cores) or cell by cell in Jupyter/VS Code
# (`# %%` marks the cells). No `audit.toml`: the models and data live in this process.
# Needs `pip install 'model-audit[demo,notebook]'` (scikit-learn's digits, pandas).

# %%
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

import audit

QUICK = "--quick" in sys.argv  # the test suite's reduced run
HERE = Path(__file__).resolve().parent
torch.set_num_threads(1)

# %% [markdown]
# Two small MLPs of one recipe, two seeds, trained for a moment on 1,200 digits; the other 597 are held out.

# %%
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
order = np.random.default_rng(0).permutation(len(x))
train, test = order[:1200], order[1200:]


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(40 if QUICK else 150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


models = {"seed_0": mlp(0), "seed_1": mlp(1)}
held_out = (x[test], y[test])

# %% [markdown]
# ## One probe, one call
# CKA between the two seeds, layer by layer, on the held-out digits. The result holds the metrics, the
# arrays (the CKA matrix) and any warnings.

# %%
cka = audit.run_probe("cka", models, {"digits_test": held_out}, device="cpu")
print(cka)
print("accuracy of seed_1:", round(cka.metric("accuracy", model="seed_1"), 4))
print("CKA matrix (rows: seed_0's layers, columns: seed_1's):")
print(np.round(cka.arrays["matrix"], 3))

# %% [markdown]
# The same call with a catalog records the result (a DuckDB file, the one `audit run` writes) and reuses it
# when the cell runs again with the same weights, data and parameters.

# %%
catalog = HERE / ".audit" / "notebook.duckdb"
cka = audit.run_probe("cka", models, {"digits_test": held_out}, device="cpu", catalog=catalog)
again = audit.run_probe("cka", models, {"digits_test": held_out}, device="cpu", catalog=catalog)
print("recorded", cka.result_id, "· second call reused it:", again.reused)

entk = audit.run_probe(
    "entk", models["seed_0"], {"digits_test": held_out}, params={"max_examples": 64 if QUICK else 256},
    device="cpu", catalog=catalog,
)
print("eNTK effective rank of seed_0:", round(entk.metric("ntk_effective_rank"), 2))

# %% [markdown]
# ## The catalog as data frames
# `open_catalog` reads the views `audit query` reads, as pandas DataFrames (or pyarrow tables with `.arrow`).

# %%
reader = audit.open_catalog(catalog)
frame = reader.latest_metrics(metric="accuracy")
print(frame[["probe", "model", "dataset", "value"]].to_string(index=False))
print(reader.sql("select probe, count(*) as metrics from metrics group by probe order by probe").to_string(index=False))
