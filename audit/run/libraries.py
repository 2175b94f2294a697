"""Models by name from the libraries users already have: a Hugging Face ``save_pretrained`` directory
(transformers), a torchvision or a timm architecture.

Nothing is downloaded. A Hugging Face directory loads with ``local_files_only=True`` under
``HF_HUB_OFFLINE=1`` and from safetensors only (a ``pytorch_model.bin`` is a pickle); torchvision models
are built with ``weights=None`` and timm models with ``pretrained=False``, and take their trained weights
from a local file (``weights = ...``, loaded by :mod:`audit.run.sources` like a factory's). Each library is
imported only when a model needs it: ``import transformers`` alone costs seconds.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from audit.api.errors import UsageError
from audit.specs import HF_CONFIG, MODEL_LIBRARIES, ModelSpec

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# a model built without weights is random: a fixed seed makes it the same model at every load, so that
# its fingerprint (which cannot hash random numbers not yet drawn) names one model
_BUILD_SEED = 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def import_library(kind: str, what: str) -> ModuleType:
    """The library of a model kind; one line naming the extra when it is missing, or the first line of
    the error when it is installed but does not import (a torchvision built for another torch)."""
    module, extra = MODEL_LIBRARIES[kind]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise UsageError(
                f"{what}: {module} is not installed (pip install 'model-audit[{extra}]')"
            ) from None
        reason = _first_line(e)
    except Exception as e:  # e.g. RuntimeError: operator torchvision::nms does not exist
        reason = _first_line(e)
    raise UsageError(
        f"{what}: {module} is installed but fails to import beside torch {torch.__version__}: {reason}"
    )


def _seeded(build: Callable[..., Any], kwargs: dict[str, Any], what: str, label: str) -> torch.nn.Module:
    """Call a library's builder under a fixed seed (see ``_BUILD_SEED``), its errors as one line."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_BUILD_SEED)
        try:
            return build(**kwargs)
        except Exception as e:
            raise UsageError(f"{what}: {label} failed: {_first_line(e)}") from None


# ---------------------------------------------------------------- torchvision and timm


def _torchvision_builder(models: ModuleType, name: str) -> Callable[..., Any] | None:
    get = getattr(models, "get_model_builder", None)  # torchvision >= 0.14
    if get is not None:
        try:
            return get(name)
        except ValueError:
            return None
    builder = getattr(models, name, None)
    return builder if inspect.isfunction(builder) else None


def build_torchvision(name: str, kwargs: dict[str, Any], what: str) -> torch.nn.Module:
    """``torchvision.models.get_model(name, weights=None, **kwargs)``; a detection or segmentation
    model's backbone would download ImageNet weights by default, so it gets ``weights_backbone=None`` too."""
    torchvision = import_library("torchvision", what)
    builder = _torchvision_builder(torchvision.models, name)
    if builder is None:
        raise UsageError(
            f"{what}: torchvision {torchvision.__version__} has no model {name!r} "
            "(torchvision.models.list_models() lists them)"
        )
    offline = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        offline["weights_backbone"] = None
    return _seeded(builder, {**kwargs, **offline}, what, f"torchvision.models.get_model({name!r})")


def build_timm(name: str, kwargs: dict[str, Any], what: str) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``."""
    timm = import_library("timm", what)
    if not timm.is_model(name):
        raise UsageError(
            f"{what}: timm {timm.__version__} has no model {name!r} (timm.list_models() lists them)"
        )

    def create(**kw: Any) -> Any:
        return timm.create_model(name, pretrained=False, **kw)

    return _seeded(create, kwargs, what, f"timm.create_model({name!r})")


# ---------------------------------------------------------------- Hugging Face


@contextmanager
def _offline() -> Iterator[None]:
    """The hub's offline switches, for the import and the load (``local_files_only`` says the same to
    from_pretrained; the variables also stop whatever it calls from asking the hub)."""
    saved = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    os.environ.update(dict.fromkeys(_OFFLINE_VARS, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """No progress bar or load report on the terminal: they would break the run's display, and a
    checkpoint that does not fit is reported as one line (see :func:`load_huggingface`)."""
    logging = transformers.utils.logging
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _is_model_class(transformers: ModuleType, cls: Any) -> bool:
    """A transformers model class or an Auto class of models (not a config, tokenizer or processor)."""
    if not isinstance(cls, type):
        return False
    try:
        from transformers.models.auto.auto_factory import _BaseAutoModelClass
    except ImportError:  # a layout this code does not know: accept what can load weights
        return hasattr(cls, "from_pretrained") and not cls.__name__.endswith(("Config", "Tokenizer"))
    return issubclass(cls, (transformers.PreTrainedModel, _BaseAutoModelClass))


def _class_named(transformers: ModuleType, name: str, what: str) -> type | None:
    try:
        cls = getattr(transformers, name)
    except AttributeError:
        return None
    except Exception as e:  # transformers knows the class, but something it needs does not import
        raise UsageError(f"{what}: cannot import transformers.{name}: {_first_line(e)}") from None
    return cls if _is_model_class(transformers, cls) else None


def _architectures(directory: Path) -> list[str]:
    try:
        found = json.loads((directory / HF_CONFIG).read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        return []  # from_pretrained reports an unreadable config itself
    return [a for a in found or [] if isinstance(a, str)]


def transformers_class(transformers: ModuleType, spec: ModelSpec, what: str) -> type:
    """`class = ...` when given; else the class the directory was saved from (config.json's first
    architecture) when transformers has it; else AutoModel (the bare model of the config's type)."""
    if spec.model_class is not None:
        cls = _class_named(transformers, spec.model_class, what)
        if cls is None:
            raise UsageError(
                f"{what}: class {spec.model_class!r} is not a model class of transformers "
                f"{transformers.__version__} (e.g. AutoModel, BertModel, ViTForImageClassification)"
            )
        return cls
    saved_as = _architectures(spec.huggingface) if spec.huggingface else []
    return (saved_as and _class_named(transformers, saved_as[0], what)) or transformers.AutoModel


def load_huggingface(spec: ModelSpec, what: str) -> torch.nn.Module:
    """A save_pretrained directory with transformers, offline and from safetensors only. Weights the class
    needs but the directory lacks are an error: transformers would initialise them at random and the
    probes would audit noise (a head class over a bare checkpoint, say)."""
    directory = spec.huggingface
    assert directory is not None
    with _offline():
        transformers = import_library("huggingface", what)
        cls = transformers_class(transformers, spec, what)
        options = {
            **spec.kwargs,
            "local_files_only": True,
            "use_safetensors": True,
            "output_loading_info": True,
        }
        with _quiet(transformers):
            try:
                model, info = cls.from_pretrained(str(directory), **options)
            except Exception as e:
                raise UsageError(
                    f"{what}: cannot load {directory} as {cls.__name__}: {_first_line(e)}"
                ) from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        few = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        saved_as = ", ".join(_architectures(directory)) or "not recorded"
        raise UsageError(
            f"{what}: {directory.name} lacks weights that {type(model).__name__} needs (missing: {few}), "
            f"which would be random; set class = the class it was saved from (config.json: {saved_as})"
        )
    return model
