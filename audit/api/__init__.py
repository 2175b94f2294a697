"""What a probe author imports: the hook specifications, the probe contract (Probe, Param, Needs,
ProbeResult), the job context and activation capture, stored results, figures and the errors a probe raises.

Nothing here imports the runner, the catalog or the command line: the arrows point into this package only.
"""
