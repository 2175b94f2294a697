"""The built-in `entk` probe plugin (its probe class lives in :mod:`.probe`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.entk.probe import ENTKProbe

    register(ENTKProbe())
