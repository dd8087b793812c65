"""Tunables of blob downloads, kept in this one module so tests and benchmarks can shrink them.

The other modules of the package read them as ``tuning.NAME`` when they need them, so a value set
here (or through the package, which forwards assignments here) takes effect at once.
"""

from __future__ import annotations

RETRIES = 5  # consecutive failed attempts of one range (no byte arrived) before giving up
BACKOFF_BASE = 0.5  # seconds; doubles per consecutive failure
BACKOFF_MAX = 10.0
CHECKPOINT_INTERVAL = 0.25  # seconds between resume records (cheap: no flush, see boot_id)
CHECKPOINT_INTERVAL_FLUSHED = 2.0  # ... where each record costs an fdatasync of the data
PROGRESS_INTERVAL = 0.1  # seconds between progress reports of one blob (the last one always comes)
SPACE_MARGIN = 16 << 20  # bytes kept free beyond what a download needs
MAX_REDIRECTS = 10
CONNECTIONS_PER_BLOB = 4
CONNECT_TIMEOUT = 30.0
HASH_BUF = 4 << 20
STATE_VERSION = 1

NAMES = frozenset(
    {
        "RETRIES",
        "BACKOFF_BASE",
        "BACKOFF_MAX",
        "CHECKPOINT_INTERVAL",
        "CHECKPOINT_INTERVAL_FLUSHED",
        "PROGRESS_INTERVAL",
        "SPACE_MARGIN",
        "MAX_REDIRECTS",
        "CONNECTIONS_PER_BLOB",
        "CONNECT_TIMEOUT",
        "HASH_BUF",
        "STATE_VERSION",
    }
)
