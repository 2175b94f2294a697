"""The DuckDB catalog: storage (store), schema migrations (migrations), export and import (exchange).

Nothing is imported here: the command line reads the default below without loading DuckDB.
"""

DEFAULT_WAIT_S = 60.0  # seconds a command waits for another process writing the catalog
