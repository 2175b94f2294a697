"""The values the `cka` probe's parameters may take, as plain tuples.

The probe declares its parameters from these (``choices=...``) and the mathematics modules validate against
the same tuples. Nothing is imported here: registering the probe, which every command that reads audit.toml
does, costs no NumPy, SciPy or torch.
"""

ESTIMATORS = ("unbiased", "biased")  # HSIC estimators (model_audit_probes.cka.hsic)
GRAM_DTYPES = ("float32", "float64")  # torch dtypes of the Gram products, by name
