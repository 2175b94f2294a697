"""The built-in `entk` probe plugin (its probe class lives in :mod:`.probe`, its CLI command in :mod:`.commands`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.entk.probe import ENTKProbe

    register(ENTKProbe())


@hookimpl
def register_commands(app):
    from model_audit_probes.entk.commands import register

    register(app)
