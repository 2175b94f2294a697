"""The built-in `entk` probe plugin (its probe class lives in :mod:`.probe`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.entk.probe import ENTKProbe

    register(ENTKProbe())


@hookimpl
def render_figures(result):
    if result.probe != "entk":
        return None
    from model_audit_probes.entk.figures import render

    return render(result)
