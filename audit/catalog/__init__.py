"""The DuckDB catalog: storage (store), schema migrations (migrations), export and import (exchange)."""
