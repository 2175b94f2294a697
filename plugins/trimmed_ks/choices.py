"""The values the `trimmed_ks` probe's parameters may take, as plain tuples.

The probe declares its parameters from these (``choices=...``) and the mathematics modules validate against
the same tuples. Nothing is imported here: registering the probe, which every command that reads audit.toml
does, costs no NumPy, SciPy or torch.
"""

SCORES = ("auto", "margin", "true_logprob", "max_prob")  # .metrics
ECE_VARIANTS = ("top_label", "positive_class")  # .metrics
RULES = ("ks_asymptotic", "dkw_conservative", "authors")  # threshold rules of .dalpha
SPLITS = ("halves", "same")
