"""Job planning: expansion of probe entries, command-line filters, ad-hoc probes, device resolution."""

from __future__ import annotations

import pytest
import torch

from audit.api.errors import UsageError
from audit.catalog.store import Catalog
from audit.config import load_config
from audit.registry import installed_probes
from audit.run.devices import resolve_device
from audit.run.plan import plan
from audit.run.runner import Runner


@pytest.fixture
def config(mini_project):
    """The mini project's models and datasets (the demo's names, small models) with two CKA entries."""
    text = (mini_project / "audit.toml").read_text()
    text = text[: text.index("[[probes]]")]
    text += '[[probes]]\nprobe = "cka"\nmodels = ["mlp_a"]\ndatasets = ["digits_test", "digits_rotated"]\n'
    text += '[[probes]]\nprobe = "cka"\nmodels = ["mlp_a", "mlp_b"]\ndatasets = ["digits_test"]\n'
    (mini_project / "audit.toml").write_text(text)
    return load_config(mini_project / "audit.toml", installed_probes())


def labels(jobs):
    return [(j.models, j.datasets) for j in jobs]


def test_entries_become_jobs_and_filters_narrow_them(config):
    probes = installed_probes()
    assert labels(plan(config, probes)) == [
        (("mlp_a",), ("digits_test", "digits_rotated")),
        (("mlp_a", "mlp_b"), ("digits_test",)),
    ]
    assert labels(plan(config, probes, only_models=["mlp_b"])) == [(("mlp_a", "mlp_b"), ("digits_test",))]
    assert labels(plan(config, probes, only_datasets=["digits_rotated"])) == [
        (("mlp_a",), ("digits_test", "digits_rotated"))
    ]
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        plan(config, probes, only_datasets=["nope"])


def test_a_probe_named_but_not_configured_runs_on_what_the_flags_name(config):
    config.probes.clear()
    jobs = plan(
        config, installed_probes(), only_probes=["cka"], only_models=["mlp_b"], only_datasets=["digits_test"]
    )
    assert labels(jobs) == [(("mlp_b",), ("digits_test",))]
    assert jobs[0].params["batch_size"] == 256  # the probe's defaults


def test_two_models_on_two_datasets_is_refused_before_anything_runs(config):
    config.probes.clear()
    with pytest.raises(UsageError, match="not both in one job"):
        plan(
            config,
            installed_probes(),
            only_probes=["cka"],
            only_models=["mlp_a", "mlp_b"],
            only_datasets=["digits_test", "digits_rotated"],
        )
    with pytest.raises(UsageError, match="takes 1 to 2 datasets per job, got 3"):
        plan(
            config,
            installed_probes(),
            only_probes=["cka"],
            only_models=["mlp_a"],
            only_datasets=["digits_train", "digits_test", "digits_rotated"],
        )


def test_cache_key_follows_content_params_and_roles(config, mini_project):
    runner = Runner(config, Catalog(mini_project / "c.duckdb"), torch.device("cpu"))
    a, b = plan(config, installed_probes())
    assert runner.cache_key(a) != runner.cache_key(b)
    assert runner.cache_key(a) == runner.cache_key(a)
    swapped = type(a)(a.probe, a.entry_index, a.models, a.datasets[::-1], a.params)
    assert runner.cache_key(swapped) != runner.cache_key(a)  # ID and OOD are roles, not a set
    other = type(a)(a.probe, a.entry_index, a.models, a.datasets, {**a.params, "batch_size": 64})
    assert runner.cache_key(other) != runner.cache_key(a)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("mps:0")


def test_context_generators_are_seeded_per_job():
    from audit.api.context import Context

    a, b, c = (Context([], [], torch.device("cpu"), seed=s) for s in (7, 7, 8))
    # the same seed gives the same stream bit for bit: exact equality is the property under test
    assert a.rng.random() == b.rng.random() != c.rng.random()
    assert torch.equal(
        torch.rand(3, generator=a.torch_generator()), torch.rand(3, generator=b.torch_generator())
    )
    assert not torch.equal(
        torch.rand(3, generator=a.torch_generator()), torch.rand(3, generator=c.torch_generator())
    )
