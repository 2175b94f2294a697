"""Models by name from the libraries users have: Hugging Face directories, torchvision, timm; `output`.

The Hugging Face models are tiny ones built from small configs with random weights and saved with
save_pretrained, so everything runs offline. torchvision and timm are exercised twice: through stand-in
modules (the loading, the weights, the messages: runs everywhere) and for real where they import (the
GPU machine; on a CPU-only torch wheel the PyPI torchvision does not import).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import shutil
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from audit.api.errors import ConfigError, UsageError
from audit.config import ModelSpec, load_config
from audit.run.sources import load_model, model_fingerprint
from conftest import audit_cli

try:
    import transformers
except ImportError:  # the [hf] extra (part of [test]); the Hugging Face tests skip without it
    transformers = None

CPU = torch.device("cpu")
TINY_BERT = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
)
TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


REAL_LIBRARY = "does not import here (not installed, or built for another torch); the GPU machine runs this"


@pytest.fixture(scope="session")
def hf(tmp_path_factory) -> dict:
    """Three tiny Hugging Face models saved under one folder, with the in-memory originals to compare to."""
    if transformers is None:
        pytest.skip("transformers is not installed (pip install 'model-audit[hf]')")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    models = {
        "bert": transformers.BertModel(transformers.BertConfig(**TINY_BERT)),
        "vit": transformers.ViTForImageClassification(transformers.ViTConfig(**TINY_VIT, num_labels=3)),
        "resnet": transformers.ResNetForImageClassification(
            transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
        ),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        model.eval()
    return {"root": root, **models}


def config(folder: Path, text: str) -> Path:
    path = folder / "audit.toml"
    path.write_text(textwrap.dedent(text))
    return path


def loaded(folder: Path, text: str, name: str = "m") -> torch.nn.Module:
    cfg = load_config(config(folder, text), {})
    return load_model(cfg.models[name], cfg.root, CPU)


def spec(folder: Path, text: str, name: str = "m") -> ModelSpec:
    return load_config(config(folder, text), {}).models[name]


def config_error(folder: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(config(folder, text), {})
    assert "\n" not in str(info.value)
    return info.value


TOKENS = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------- Hugging Face directories


def test_a_directory_loads_offline_as_the_class_it_was_saved_from(hf):
    root = hf["root"]
    before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    for name, x, key in (
        ("bert", TOKENS, "pooler_output"),
        ("vit", IMAGES, "logits"),
        ("resnet", IMAGES, "logits"),
    ):
        model = loaded(root, f'[models.m]\nhuggingface = "{name}"\n')
        assert type(model) is type(hf[name])  # config.json's architectures
        assert not model.training
        with torch.no_grad():
            got, want = model(x), getattr(hf[name](x), key)  # "auto": logits, else pooler_output
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert {k: os.environ.get(k) for k in before} == before  # the offline switches are put back


@pytest.mark.parametrize(
    "table, read",
    [
        ('output = "last_hidden_state"', lambda out: out.last_hidden_state),
        ('output = "pooler_output"', lambda out: out.pooler_output),
        (
            'output = "hidden_states.-1"\nkwargs = { output_hidden_states = true }',
            lambda out: out.hidden_states[-1],
        ),
        (
            'output = "hidden_states[1]"\nkwargs = { output_hidden_states = true }',
            lambda out: out.hidden_states[1],
        ),
        ("output = 0", lambda out: out[0]),
    ],
    ids=["last_hidden_state", "pooler_output", "hidden_state-1", "hidden_state1", "index"],
)
def test_output_picks_what_the_probes_see(hf, table, read):
    model = loaded(hf["root"], f'[models.m]\nhuggingface = "bert"\n{table}\n')
    with torch.no_grad():
        want = read(hf["bert"](TOKENS, output_hidden_states=True))
        torch.testing.assert_close(model(TOKENS), want, rtol=1e-5, atol=1e-6)


def test_class_overrides_the_saved_architecture_and_unknown_architectures_fall_back_to_automodel(
    hf, tmp_path
):
    root = hf["root"]
    base = loaded(root, '[models.m]\nhuggingface = "resnet"\nclass = "ResNetModel"\n')
    assert type(base) is transformers.ResNetModel  # the checkpoint's head is left out
    with torch.no_grad():
        torch.testing.assert_close(
            base(IMAGES), hf["resnet"].resnet(IMAGES).pooler_output, rtol=1e-5, atol=1e-6
        )

    custom = shutil.copytree(root / "bert", tmp_path / "custom")
    meta = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**meta, "architectures": ["MyOwnBert"]}))
    assert type(loaded(tmp_path, '[models.m]\nhuggingface = "custom"\n')) is transformers.BertModel


def test_a_class_that_needs_weights_the_directory_lacks_is_one_line(hf):
    # ViTModel has a pooler that ViTForImageClassification does not save: it would be random
    with pytest.raises(UsageError) as info:
        loaded(hf["root"], '[models.m]\nhuggingface = "vit"\nclass = "ViTModel"\n')
    message = str(info.value)
    assert message.startswith("model 'm': vit lacks weights that ViTModel needs (missing: pooler.dense")
    assert "set class = the class it was saved from (config.json: ViTForImageClassification)" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["NoSuchModel", "BertConfig", "BertTokenizer"])
def test_an_unknown_class_is_one_line(hf, name):
    with pytest.raises(UsageError) as info:
        loaded(hf["root"], f'[models.m]\nhuggingface = "bert"\nclass = "{name}"\n')
    assert str(info.value).startswith(f"model 'm': class {name!r} is not a model class of transformers ")
    assert "\n" not in str(info.value)


def test_the_fingerprint_follows_content_class_output_and_kwargs(hf, tmp_path):
    shutil.copytree(hf["root"] / "bert", tmp_path / "a")
    shutil.copytree(hf["root"] / "bert", tmp_path / "b")
    fp = {
        "a": model_fingerprint(spec(tmp_path, '[models.m]\nhuggingface = "a"\n')),
        "moved": model_fingerprint(spec(tmp_path, '[models.m]\nhuggingface = "b"\n')),
        "auto": model_fingerprint(spec(tmp_path, '[models.m]\nhuggingface = "a"\noutput = "auto"\n')),
        "class": model_fingerprint(spec(tmp_path, '[models.m]\nhuggingface = "a"\nclass = "BertModel"\n')),
        "output": model_fingerprint(
            spec(tmp_path, '[models.m]\nhuggingface = "a"\noutput = "pooler_output"\n')
        ),
        "index": model_fingerprint(spec(tmp_path, '[models.m]\nhuggingface = "a"\noutput = 0\n')),
        "kwargs": model_fingerprint(
            spec(tmp_path, '[models.m]\nhuggingface = "a"\nkwargs = { attn_implementation = "eager" }\n')
        ),
    }
    assert fp["a"] == fp["moved"] == fp["auto"]  # content, not path; "auto" is the default
    assert len({fp[k] for k in ("a", "class", "output", "index", "kwargs")}) == 5
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**meta, "layer_norm_eps": 1e-6}))
    assert model_fingerprint(spec(tmp_path, '[models.m]\nhuggingface = "b"\n')) != fp["a"]
    (tmp_path / "a" / "extra" / "notes.txt").parent.mkdir()
    (tmp_path / "a" / "extra" / "notes.txt").write_text("an added file")
    assert model_fingerprint(spec(tmp_path, '[models.m]\nhuggingface = "a"\n')) != fp["a"]


def test_output_takes_part_in_the_spec_of_every_kind(tmp_path):
    save_file({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, tmp_path / "w.safetensors")
    plain = '[models.m]\nfactory = "torch.nn:Linear"\nkwargs = { in_features = 2, out_features = 2 }\n'
    assert spec(tmp_path, plain).output is None
    assert spec(tmp_path, plain + "output = 1\n").output == 1
    assert model_fingerprint(spec(tmp_path, plain)) != model_fingerprint(
        spec(tmp_path, plain + "output = 1\n")
    )
    assert spec(tmp_path, plain + 'output = "auto"\n') == spec(tmp_path, plain)


def test_an_int_output_picks_an_element_of_a_tuple(tmp_path):
    (tmp_path / "twohead.py").write_text(
        textwrap.dedent(
            """
            import torch

            class TwoHead(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)

                def forward(self, x):
                    return self.a(x), self.b(x)

            def build():
                return TwoHead()
            """
        )
    )
    x = torch.randn(5, 4)
    model = loaded(tmp_path, '[models.m]\nfactory = "twohead:build"\noutput = 1\n')
    assert model(x).shape == (5, 2)
    torch.testing.assert_close(model(x), model.b(x))
    assert loaded(tmp_path, '[models.m]\nfactory = "twohead:build"\n')(x).shape == (5, 3)  # auto: the first


# ---------------------------------------------------------------- configuration errors


@pytest.fixture
def dirs(hf, tmp_path) -> Path:
    shutil.copytree(hf["root"] / "bert", tmp_path / "bert")
    (tmp_path / "nosafe").mkdir()
    (tmp_path / "nosafe" / "config.json").write_text("{}")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"")
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "model.safetensors").write_bytes(b"")
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "b.ts").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    "text, key, fragments",
    [
        ('huggingface = "missing"', "models.m.huggingface", ["directory not found: "]),
        (
            'huggingface = "nosafe"',
            "models.m.huggingface",
            ["no model.safetensors in ", "save_pretrained(dir)"],
        ),
        (
            'huggingface = "pickled"',
            "models.m.huggingface",
            ["pytorch_model.bin is a pickle and is never loaded"],
        ),
        ('huggingface = "noconfig"', "models.m.huggingface", ["no config.json in "]),
        (
            'huggingface = "w.safetensors"',
            "models.m.huggingface",
            ["expected a directory saved with save_pretrained"],
        ),
        ('huggingface = "runs/*"', "models.m.huggingface", ["a glob is not supported here"]),
        (
            'huggingface = "bert"\nfactory = "x:y"',
            "models.m",
            ["expected exactly one of: factory, torchvision or timm", "; got factory and huggingface"],
        ),
        (
            'huggingface = "bert"\nweights = "w.safetensors"',
            "models.m.weights",
            ["weights do not apply to huggingface"],
        ),
        ('torchscript = "b.ts"\nweights = "w.safetensors"', "models.m.weights", ["weights need a factory"]),
        ('factory = "x:y"\nclass = "BertModel"', "models.m.class", ["class applies to huggingface"]),
        ('huggingface = "bert"\nclass = "not a class"', "models.m.class", ["expected a class name"]),
        (
            'torchscript = "b.ts"\noutput = "logits"',
            "models.m.output",
            ["cannot be applied to a TorchScript model"],
        ),
        (
            'factory = "x:y"\noutput = "two words"',
            "models.m.output",
            ["expected 'auto', a key or dotted path"],
        ),
        ('factory = "x:y"\noutput = 1.5', "models.m.output", ["expected a string or an integer"]),
        (
            'huggingface = "bert"\nkwargs = { local_files_only = false }',
            "models.m.kwargs.local_files_only",
            ["offline"],
        ),
        ('torchvision = ""', "models.m.torchvision", ["expected a model name"]),
    ],
    ids=[
        "hf-missing-dir",
        "hf-no-safetensors",
        "hf-only-pickle",
        "hf-no-config",
        "hf-a-file",
        "hf-glob",
        "two-kinds",
        "weights-with-hf",
        "weights-with-torchscript",
        "class-without-hf",
        "class-not-identifier",
        "output-with-torchscript",
        "output-bad-rule",
        "output-float",
        "hf-reserved-kwarg",
        "torchvision-empty-name",
    ],
)
def test_configuration_errors_are_one_line_naming_file_and_key(dirs, text, key, fragments):
    e = config_error(dirs, f"[models.m]\n{text}\n")
    assert e.key == key
    assert str(e).startswith(f"{dirs / 'audit.toml'}: {key}: ")
    for fragment in fragments:
        assert fragment in str(e)


@pytest.mark.parametrize(
    "kind, key, extra",
    [
        ("transformers", "huggingface", "hf"),
        ("torchvision", "torchvision", "torchvision"),
        ("timm", "timm", "timm"),
    ],
)
def test_a_missing_library_is_one_line_at_config_load(dirs, monkeypatch, kind, key, extra):
    monkeypatch.setitem(sys.modules, kind, None)  # what find_spec and import see of an absent package
    value = "bert" if key == "huggingface" else "resnet18"
    e = config_error(dirs, f'[models.r18]\n{key} = "{value}"\n')
    assert str(e) == (
        f"{dirs / 'audit.toml'}: models.r18.{key}: {kind} is not installed (pip install 'model-audit[{extra}]')"
    )


def test_a_library_gone_at_model_load_is_one_line(hf, monkeypatch):
    model = spec(hf["root"], '[models.m]\nhuggingface = "bert"\n')
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        UsageError, match=r"^model 'm': transformers is not installed \(pip install 'model-audit\[hf\]'\)$"
    ):
        load_model(model, hf["root"], CPU)


def test_a_library_that_fails_to_import_is_one_line_with_its_first_error_line(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist\\nmore detail")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    model = spec(tmp_path, '[models.m]\ntorchvision = "resnet18"\n')  # found, so the config loads
    with pytest.raises(UsageError) as info:
        load_model(model, tmp_path, CPU)
    assert str(info.value) == (
        f"model 'm': torchvision is installed but fails to import beside torch {torch.__version__}: "
        "operator torchvision::nms does not exist"
    )


def test_the_cli_reports_a_missing_library_in_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if torchvision were not installed
    path = config(tmp_path, '[models.r18]\ntorchvision = "resnet18"\n')
    r = audit_cli("run", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"error: {path}: models.r18.torchvision: torchvision is not installed "
        "(pip install 'model-audit[torchvision]')"
    ]
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / ".audit").exists()  # no catalog was opened


# ---------------------------------------------------------------- torchvision and timm: stand-ins


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec reads it
    module.__dict__.update(attrs)
    return module


def _tiny(*, weights=None, num_classes: int = 3) -> torch.nn.Module:
    assert weights is None
    return torch.nn.Linear(4, num_classes)


def _detector(*, weights=None, weights_backbone="IMAGENET1K_V1", num_classes: int = 3) -> torch.nn.Module:
    if weights is not None or weights_backbone is not None:
        raise RuntimeError("this would download weights")
    return torch.nn.Linear(4, num_classes)


def _get_model_builder(name: str):
    builders = {"tiny": _tiny, "detector": _detector}
    if name not in builders:
        raise ValueError(f"Unknown model {name}")
    return builders[name]


@pytest.fixture
def stand_ins(monkeypatch):
    """torchvision and timm as modules with the calls model-audit makes (the real ones: further below)."""
    models = _module("torchvision.models", get_model_builder=_get_model_builder)
    monkeypatch.setitem(
        sys.modules, "torchvision", _module("torchvision", __version__="0.0-standin", models=models)
    )
    monkeypatch.setitem(sys.modules, "torchvision.models", models)

    def create_model(name: str, pretrained: bool = False, **kwargs) -> torch.nn.Module:
        assert pretrained is False
        return _tiny(**kwargs)

    timm = _module(
        "timm", __version__="0.0-standin", is_model=lambda n: n == "tiny", create_model=create_model
    )
    monkeypatch.setitem(sys.modules, "timm", timm)


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_library_models_take_kwargs_and_local_weights_like_a_factory(stand_ins, tmp_path, kind):
    reference = torch.nn.Linear(4, 5)
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    x = torch.randn(6, 4)
    for weights in ("w.safetensors", "w.pt"):
        model = loaded(
            tmp_path, f'[models.m]\n{kind} = "tiny"\nkwargs = {{ num_classes = 5 }}\nweights = "{weights}"\n'
        )
        torch.testing.assert_close(model(x), reference(x))
    built_by = (
        "torchvision.models.get_model('tiny')" if kind == "torchvision" else "timm.create_model('tiny')"
    )
    with pytest.raises(UsageError) as info:
        loaded(tmp_path, f'[models.m]\n{kind} = "tiny"\nweights = "w.safetensors"\n')  # 3 classes, not 5
    assert str(info.value) == (
        f"model 'm': weights w.safetensors do not fit the module built by {built_by} "
        "(missing: none; unexpected: none; other shape: weight (5, 4) vs (3, 4), bias (5,) vs (3,))"
    )
    with pytest.raises(UsageError, match=rf"^model 'm': {kind} 0.0-standin has no model 'nope' \("):
        loaded(tmp_path, f'[models.m]\n{kind} = "nope"\n')


def test_a_library_model_without_weights_is_the_same_model_at_every_load(stand_ins, tmp_path):
    text = '[models.m]\ntorchvision = "tiny"\n'
    torch.manual_seed(123)
    first = loaded(tmp_path, text).state_dict()
    second = loaded(tmp_path, text).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_torchvision_backbone_is_not_downloaded(stand_ins, tmp_path):
    assert isinstance(loaded(tmp_path, '[models.m]\ntorchvision = "detector"\n'), torch.nn.Linear)
    e = config_error(
        tmp_path, '[models.m]\ntorchvision = "detector"\nkwargs = { weights_backbone = "DEFAULT" }\n'
    )
    assert e.key == "models.m.kwargs.weights_backbone" and "nothing is downloaded" in str(e)
    e = config_error(tmp_path, '[models.m]\ntimm = "tiny"\nkwargs = { pretrained = true }\n')
    assert e.key == "models.m.kwargs.pretrained"


def test_a_glob_of_weights_makes_a_family_of_library_models(stand_ins, tmp_path):
    (tmp_path / "ckpt").mkdir()
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_file(torch.nn.Linear(4, 3).state_dict(), tmp_path / "ckpt" / f"seed_{seed}.safetensors")
    cfg = load_config(
        config(tmp_path, '[models.s]\ntimm = "tiny"\nweights = "ckpt/seed_*.safetensors"\n'), {}
    )
    assert list(cfg.models) == ["s/seed_0", "s/seed_1"]
    assert {m.timm for m in cfg.models.values()} == {"tiny"}
    assert model_fingerprint(cfg.models["s/seed_0"]) != model_fingerprint(cfg.models["s/seed_1"])


# ---------------------------------------------------------------- torchvision and timm: the real libraries


@pytest.mark.skipif(not _importable("torchvision"), reason=f"torchvision {REAL_LIBRARY}")
def test_a_real_torchvision_resnet_with_local_weights(tmp_path):
    import torchvision

    torch.manual_seed(7)
    reference = torchvision.models.resnet18(num_classes=3).eval()
    save_file(reference.state_dict(), tmp_path / "r18.safetensors")
    text = '[models.m]\ntorchvision = "resnet18"\nkwargs = { num_classes = 3 }\nweights = "r18.safetensors"\n'
    model = loaded(tmp_path, text)
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), reference(IMAGES))
    with pytest.raises(
        UsageError, match=r"do not fit the module built by torchvision.models.get_model\('resnet18'\)"
    ):
        loaded(
            tmp_path, '[models.m]\ntorchvision = "resnet18"\nweights = "r18.safetensors"\n'
        )  # 1000 classes
    with pytest.raises(UsageError, match="has no model 'resnet_nope'"):
        loaded(tmp_path, '[models.m]\ntorchvision = "resnet_nope"\n')


@pytest.mark.skipif(not _importable("timm"), reason=f"timm {REAL_LIBRARY}")
def test_a_real_timm_resnet_with_local_weights(tmp_path):
    import timm

    torch.manual_seed(7)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    model = loaded(
        tmp_path, '[models.m]\ntimm = "resnet18"\nkwargs = { num_classes = 3 }\nweights = "r18.pt"\n'
    )
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), reference(IMAGES))
    with pytest.raises(UsageError, match="has no model 'resnet_nope'"):
        loaded(tmp_path, '[models.m]\ntimm = "resnet_nope"\n')
