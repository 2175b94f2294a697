"""The small context a probe receives: its models and data, the device, progress, a seeded generator.

This is the whole surface of the core that a probe touches (besides the plugin contract), so that a
probe can be tested with a hand-made Context and no CLI or catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from audit.api import capture
from audit.api.errors import ProbeInputError

OUTPUTS_KIND = "outputs"


class Progress(Protocol):
    def advance(self, steps: float = 1) -> None: ...


class _NoProgress:
    def advance(self, steps: float = 1) -> None:
        pass


ProgressFactory = Callable[[float, str], Progress]


def no_progress(total: float, description: str) -> Progress:
    return _NoProgress()


class OutputCache(Protocol):
    """Where :meth:`Context.model_outputs` keeps outputs between jobs and runs (the runner's: the catalog)."""

    def get(self, model_fp: str, dataset_fp: str, kind: str) -> np.ndarray | None: ...

    def put(self, model_fp: str, dataset_fp: str, kind: str, array: np.ndarray) -> None: ...


@dataclass
class ModelHandle:
    """A model of the job: loaded lazily, once, onto the job's device, in eval mode."""

    name: str
    fingerprint: str
    loader: Callable[[], torch.nn.Module]
    _module: torch.nn.Module | None = field(default=None, repr=False)

    def load(self) -> torch.nn.Module:
        if self._module is None:
            self._module = self.loader()
        return self._module


@dataclass
class DatasetHandle:
    """A dataset of the job, streamed in batches onto the device."""

    name: str
    fingerprint: str
    n: int
    task: str | None  # "classification", "regression", or None when there are no targets
    has_targets: bool
    _batches: Callable[[int, torch.device], Iterable[tuple[torch.Tensor, torch.Tensor | None]]] = field(
        repr=False
    )

    def batches(
        self, batch_size: int, device: torch.device
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
        return self._batches(batch_size, device)


@dataclass
class Context:
    models: list[ModelHandle]
    datasets: list[DatasetHandle]
    device: torch.device
    seed: int
    progress_factory: ProgressFactory = no_progress
    output_cache: OutputCache | None = None
    rng: np.random.Generator = field(init=False)
    output_cache_hits: int = field(default=0, init=False)  # model_outputs calls served from the cache
    output_cache_misses: int = field(default=0, init=False)  # model_outputs calls that ran the model
    _targets: dict[str, np.ndarray | None] = field(default_factory=dict, init=False, repr=False)
    _surveys: dict[tuple[str, str], capture.Survey] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def torch_generator(self) -> torch.Generator:
        """A torch generator seeded from the job's seed (on the CPU; move samples to the device)."""
        return torch.Generator().manual_seed(self.seed)

    def progress(self, total: float, description: str) -> Progress:
        """A progress reporter for `total` steps of long work (shown as a bar by the CLI)."""
        return self.progress_factory(total, description)

    def survey(self, model: ModelHandle, dataset: DatasetHandle | None = None) -> capture.Survey:
        """Which modules a forward pass of `model` on the first examples of `dataset` (default: the job's
        first) calls, how often, and where each output's batch axis is (computed once per pair)."""
        dataset = dataset or (self.datasets[0] if self.datasets else None)
        if dataset is None:
            raise ProbeInputError("finding a model's layers needs a dataset to run it on")
        key = (model.name, dataset.fingerprint)
        if key not in self._surveys:
            first = next(iter(dataset.batches(capture.SURVEY_EXAMPLES, self.device)))[0]
            self._surveys[key] = capture.survey(model.load(), first)
        return self._surveys[key]

    def activations(
        self, model: ModelHandle, dataset: DatasetHandle, layers: list[str], batch_size: int
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]:
        """Stream (activations of `layers`, output, targets) batch by batch on the job's device.

        Activations are batch-first and are the values each layer produced, whatever the model wrote in
        place afterwards (see :mod:`audit.api.capture`).
        """
        axes = self.survey(model, dataset).axes(layers)
        return capture.stream_activations(
            model.load(), dataset.batches(batch_size, self.device), layers, axes
        )

    def resolve_layers(
        self, model: ModelHandle, patterns: list[str] | None, dataset: DatasetHandle | None = None
    ) -> list[str]:
        """Layer names for `patterns` (empty: the default layers), checked against a forward pass of the
        model on `dataset` (default: the job's first): see :meth:`audit.api.capture.Survey.resolve`."""
        return self.survey(model, dataset).resolve(patterns)

    def model_outputs(
        self, model: ModelHandle, dataset: DatasetHandle, batch_size: int = 512
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's outputs on every example of the dataset and the dataset's targets, as numpy.

        Outputs are float32 of shape (n, C): each example's forward output flattened (a model returning
        a tuple contributes its first tensor). Targets are as the dataset yields them (int64 class
        labels, float regression targets), or None when it has none.

        With an output cache (``audit run`` passes the catalog's) the outputs are stored under the model's
        and the dataset's content fingerprints, so any later job (another probe, another ensemble
        around the same model, a later run) gets them back bit-exactly without loading the model. The
        key holds no probe parameter, batch size or device: outputs computed on CUDA serve a CPU run.
        Targets are not cached: they are read from the dataset (without the model), once per job.
        """
        key = (model.fingerprint, dataset.fingerprint, OUTPUTS_KIND)
        cached = self.output_cache.get(*key) if self.output_cache is not None else None
        if cached is not None and cached.ndim == 2 and cached.shape[0] == dataset.n:
            self.output_cache_hits += 1
            return cached.astype(np.float32, copy=False), self._dataset_targets(dataset, batch_size)
        self.output_cache_misses += 1
        module = model.load()
        bar = self.progress(dataset.n, f"outputs {model.name} on {dataset.name}")
        outputs: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        with torch.no_grad():
            for x, y in dataset.batches(batch_size, self.device):
                out = capture._first_tensor(module(x))
                if out is None or out.ndim == 0:
                    raise ProbeInputError(f"model {model.name!r} does not return a tensor with a batch axis")
                outputs.append(out.reshape(out.shape[0], -1).to("cpu", torch.float32, copy=True).numpy())
                if y is not None:
                    targets.append(y.cpu().numpy())
                bar.advance(x.shape[0])
        result = np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
        self._targets[dataset.fingerprint] = np.concatenate(targets) if targets else None
        if self.output_cache is not None:
            self.output_cache.put(*key, result)
        return result, self._copy_targets(dataset)

    def _dataset_targets(self, dataset: DatasetHandle, batch_size: int) -> np.ndarray | None:
        if dataset.fingerprint not in self._targets:
            parts = []
            if dataset.has_targets:
                parts = [
                    y.numpy() for _, y in dataset.batches(batch_size, torch.device("cpu")) if y is not None
                ]
            self._targets[dataset.fingerprint] = np.concatenate(parts) if parts else None
        return self._copy_targets(dataset)

    def _copy_targets(self, dataset: DatasetHandle) -> np.ndarray | None:
        targets = self._targets[dataset.fingerprint]
        return None if targets is None else targets.copy()
