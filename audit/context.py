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

from audit import capture


class Progress(Protocol):
    def advance(self, steps: float = 1) -> None: ...


class _NoProgress:
    def advance(self, steps: float = 1) -> None:
        pass


ProgressFactory = Callable[[float, str], Progress]


def no_progress(total: float, description: str) -> Progress:
    return _NoProgress()


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
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def torch_generator(self) -> torch.Generator:
        """A torch generator seeded from the job's seed (on the CPU; move samples to the device)."""
        return torch.Generator().manual_seed(self.seed)

    def progress(self, total: float, description: str) -> Progress:
        """A progress reporter for `total` steps of long work (shown as a bar by the CLI)."""
        return self.progress_factory(total, description)

    def activations(
        self, model: ModelHandle, dataset: DatasetHandle, layers: list[str], batch_size: int
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]:
        """Stream (activations of `layers`, output, targets) batch by batch on the job's device."""
        return capture.stream_activations(model.load(), dataset.batches(batch_size, self.device), layers)

    def resolve_layers(self, model: ModelHandle, patterns: list[str] | None) -> list[str]:
        return capture.resolve_layers(model.load(), patterns)
