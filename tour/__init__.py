"""The repository's own audit (the top-level ``audit.toml``): models and data built in seconds, offline.

``audit run`` in a fresh clone trains three small MLPs on scikit-learn's bundled digits (one recipe, three
seeds; about a second each on one CPU thread) and measures them on the held-out digits and on a shifted
copy. Nothing is downloaded and nothing is written but the catalog: the models are built by their factory
each run, and their results are reused from the catalog on the next (a factory model is keyed by its
factory and kwargs).
"""
