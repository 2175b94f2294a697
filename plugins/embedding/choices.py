"""The values the `embedding` probe's parameters may take, as plain tuples.

The probe declares its parameters from these (``choices=...``) and the mathematics modules validate against
the same tuples. Nothing is imported here: registering the probe, which every command that reads audit.toml
does, costs no NumPy, SciPy or torch.
"""

POOLINGS = ("mean", "first", "last", "max", "flatten")  # of (batch, seq, d) outputs (.extract.pool)
