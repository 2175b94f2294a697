"""The built-in `cka` probe plugin (its probe class lives in :mod:`.probe`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.cka.probe import CKAProbe

    register(CKAProbe())


@hookimpl
def render_figures(result):
    if result.probe != "cka":
        return None
    from model_audit_probes.cka.figures import render

    return render(result)


@hookimpl
def render_terminal(result):
    if result.probe != "cka":
        return None
    from model_audit_probes.cka.figures import terminal

    return terminal(result)
