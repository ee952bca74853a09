"""SQLite store: WAL, one connection on one worker thread (the single writer), schema migrations by user_version.

Every write is one `BEGIN IMMEDIATE` transaction; a notification, its decisions and the runs they start commit
together or not at all. Lock, disk-full and read-only errors surface as StoreUnavailable (HTTP 503).
"""

from controller.adapters.sqlite.intake import IntakeFaces
from controller.adapters.sqlite.ops import OpsFaces
from controller.adapters.sqlite.runs import RunFaces

__all__ = ["SqliteStore"]


class SqliteStore(IntakeFaces, RunFaces, OpsFaces):
    """Every face of the store over one connection."""
