"""The built-in `emulator` probe plugin (its probe class lives in :mod:`.probe`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.emulator.probe import EmulatorProbe

    register(EmulatorProbe())
