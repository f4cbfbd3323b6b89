"""Built-in stores, one module each, all found through the ``resultstore.stores`` entry points."""

from resultstore.stores.base import (
    INTERFACE_VERSION,
    BytesReader,
    LoopLocal,
    Payload,
    RangeReader,
    Reader,
    Stat,
    Store,
    run_blocking,
)

__all__ = [
    "INTERFACE_VERSION",
    "BytesReader",
    "LoopLocal",
    "Payload",
    "RangeReader",
    "Reader",
    "Stat",
    "Store",
    "run_blocking",
]
