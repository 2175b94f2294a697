"""The built-in `ray` executor plugin (Ray itself is optional: ``pip install 'model-audit[ray]'``)."""

from audit import hookimpl


@hookimpl
def register_executors(register):
    from model_audit_probes.ray_executor.executor import RayExecutor

    register(RayExecutor())
