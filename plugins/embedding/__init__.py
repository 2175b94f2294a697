"""The built-in `embedding` probe plugin (its probe class lives in :mod:`.probe`)."""

from audit import hookimpl


@hookimpl
def register_probes(register):
    from model_audit_probes.embedding.probe import EmbeddingProbe

    register(EmbeddingProbe())


@hookimpl
def render_figures(result):
    if result.probe != "embedding":
        return None
    from model_audit_probes.embedding.figures import render

    return render(result)
