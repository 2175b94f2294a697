"""The built-in probes of model-audit, installed as ``model_audit_probes``.

Each folder is one probe and an ordinary plugin of the ``model_audit`` entry-point group.
"""
