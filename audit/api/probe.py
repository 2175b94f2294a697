"""What a probe is: its declaration (name, version, parameters, needs) and what it returns.

A probe is an object registered through the ``register_probes`` hook. The core knows probes only
through this interface, so a third-party probe is indistinguishable from a built-in one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # NumPy and the probe context (torch) are not imported to declare or register a probe
    import numpy as np

    from audit.api.context import Context

_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    list: "a list of strings",
}


@dataclass(frozen=True)
class Param:
    """A typed probe parameter with a default; values from audit.toml are validated against it."""

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def validate(self, value: Any) -> Any:
        """Return the value converted to the declared type, or raise ValueError saying what was expected."""
        expected = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected {expected}, got {value!r}")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected {expected}, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected {expected}, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
        elif self.type is str:
            if not isinstance(value, str):
                raise ValueError(f"expected {expected}, got {value!r}")
        elif self.type is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"expected {expected}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"expected a value >= {self.min:g}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"expected a value <= {self.max:g}, got {value!r}")
        return value

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "help": self.help,
        }
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.min is not None:
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        return d


@dataclass(frozen=True)
class Needs:
    """How many models and datasets one job of the probe takes, as inclusive (min, max) ranges.

    The runner expands a configured probe entry into jobs from these: when an entry lists more items
    than ``max`` and ``max`` is 1, each item becomes its own job; otherwise the entry is one job.
    ``max=None`` means any number (an ensemble).
    """

    models: tuple[int, int | None] = (1, 1)
    datasets: tuple[int, int | None] = (1, 1)
    # the share of a GPU one job asks a scheduler for on a CUDA run (Ray's num_gpus; 0: a CPU-only probe)
    gpus: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {"models": list(self.models), "datasets": list(self.datasets), "gpus": self.gpus}


@dataclass
class Metric:
    name: str
    value: float
    model: str | None = None
    dataset: str | None = None


@dataclass
class ProbeResult:
    """What a probe measured: scalar metrics (name → number) and arrays (name → ndarray).

    A metric may be attributed to one of the job's models or datasets (for instance the CKA summary of
    the out-of-distribution dataset); otherwise it belongs to the job as a whole. Warnings are stored
    with the result so that a reader of the catalog sees what the probe flagged.
    """

    metrics: list[Metric] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def metric(
        self, name: str, value: float, *, model: str | None = None, dataset: str | None = None
    ) -> None:
        self.metrics.append(Metric(name, float(value), model, dataset))

    def array(self, name: str, value: Any) -> None:
        import numpy as np

        self.arrays[name] = np.asarray(value)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class Probe:
    """Base class of every probe. Subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    needs: ClassVar[Needs] = Needs()
    key_metrics: ClassVar[tuple[str, ...]] = ()  # the metrics summaries show first (empty: all of them)
    # a parameter that bounds a job's memory without changing its result (e.g. a forward-pass batch size):
    # on out-of-memory the job is retried with it halved (audit.run.worker). None: out-of-memory is an error.
    oom_param: ClassVar[str | None] = None

    def check_job(self, n_models: int, n_datasets: int) -> str | None:
        """Return a message if this combination of models and datasets is not meaningful for the probe."""
        return None

    def run(self, ctx: Context, params: dict[str, Any]) -> ProbeResult:
        raise NotImplementedError

    def validate_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value checked; raises KeyError/ValueError naming the parameter."""
        return validate(self.params, given, "parameter", f"probe {self.name!r}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "needs": self.needs.describe(),
            "params": [p.describe() for p in self.params],
        }


def validate(declared: Sequence[Param], given: dict[str, Any], kind: str, owner: str) -> dict[str, Any]:
    """Values for declared parameters (a probe's parameters, an executor's options): defaults filled in,
    every given value checked; raises KeyError for an unknown name, ValueError naming the parameter."""
    known = {p.name: p for p in declared}
    for key in given:
        if key not in known:
            names = ", ".join(known) or "none"
            raise KeyError(f"unknown {kind} {key!r} for {owner} (known: {names})")
    out = {}
    for p in declared:
        try:
            out[p.name] = p.validate(given[p.name]) if p.name in given else p.default
        except ValueError as e:
            raise ValueError(f"{p.name}: {e}") from None
    return out
