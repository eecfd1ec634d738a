"""The in-memory heartbeat store: pure Python, no I/O, no framework imports.

`PulseStore` (in `pulsestore`) is the face; `base`, `room`, `deletes` and `trie` are its
private parts. The store is called from one event loop only and knows nothing of HTTP.
"""

from pmcluster.store.pulsestore import KEY_OVERHEAD_BYTES, PulseStore

__all__ = ["KEY_OVERHEAD_BYTES", "PulseStore"]
