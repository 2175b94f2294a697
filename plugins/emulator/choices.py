"""The values the `emulator` probe's parameters may take, as plain tuples.

The probe declares its parameters from these (``choices=...``) and the mathematics modules validate against
the same tuples. Nothing is imported here: registering the probe, which every command that reads audit.toml
does, costs no NumPy, SciPy or torch.
"""

SPACES = ("linear", "log10")
NONPOSITIVE_RULES = ("error", "mask", "floor")
COVARIANCE_KINDS = ("auto", "diagonal", "full", "realisations")
SINGULAR_RULES = ("error", "pinv")
