"""The built-in `emulator` probe plugin (its probe class lives in :mod:`.probe`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.emulator.probe import EmulatorProbe

    register(EmulatorProbe())


@hookimpl
def render_figures(result):
    if result.probe != "emulator":
        return None
    from model_audit_probes.emulator.figures import render

    return render(result)
