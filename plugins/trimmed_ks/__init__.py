"""The built-in `trimmed_ks` probe plugin (its probe class lives in :mod:`.probe`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.trimmed_ks.probe import TrimmedKSProbe

    register(TrimmedKSProbe())


@hookimpl
def render_figures(result):
    if result.probe != "trimmed_ks":
        return None
    from model_audit_probes.trimmed_ks.figures import render

    return render(result)
