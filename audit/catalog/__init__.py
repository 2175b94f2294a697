"""The DuckDB catalog: storage (store), schema migrations (migrations), export and import (exchange).

``from audit.catalog import Catalog`` keeps working: the store's public names are re-exported on first use.
"""

from __future__ import annotations

from typing import Any

DEFAULT_WAIT_S = 60.0  # seconds a command waits for a writer (audit.catalog.store uses the same)


def __getattr__(name: str) -> Any:
    from audit.catalog import store

    if hasattr(store, name):
        return getattr(store, name)
    raise AttributeError(f"module 'audit.catalog' has no attribute {name!r}")
