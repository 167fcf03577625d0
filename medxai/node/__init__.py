"""The DICOM node (``medxai listen``): receive studies by C-STORE, process each once it is quiet
with the batch machinery, send the results back by C-STORE or STOW-RS; and one-off sends
(``medxai send``).

- :class:`DicomNode`, :class:`NodeConfig`: the node (:mod:`medxai.node.node`).
- :class:`NodeStore`: its durable state under WORKDIR (:mod:`medxai.node.store`).
- :func:`send_files`, :func:`parse_destination`, :class:`TlsConfig`: sending
  (:mod:`medxai.node.sender`).
- :func:`node_status`: what a WORKDIR holds (``medxai listen --status``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "Destination",
    "DicomNode",
    "NodeConfig",
    "NodeEvent",
    "NodeStore",
    "SendOutcome",
    "TlsConfig",
    "node_status",
    "parse_destination",
    "send_files",
]

_WHERE = {
    "DicomNode": "node",
    "NodeConfig": "node",
    "NodeEvent": "node",
    "NodeStore": "store",
    "Destination": "sender",
    "SendOutcome": "sender",
    "TlsConfig": "sender",
    "parse_destination": "sender",
    "send_files": "sender",
}


def node_status(workdir: str | Path, events: int = 20) -> dict[str, Any]:
    """The state of the node's WORKDIR (see :meth:`NodeStore.status`); works while a node runs.

    Raises:
        InputError: ``workdir`` holds no node database.
    """
    from medxai.errors import InputError
    from medxai.node.store import DB_NAME, NodeStore

    if not (Path(workdir) / DB_NAME).is_file():
        raise InputError(
            f"holds no medxai node database ({DB_NAME})",
            path=workdir,
            hint="give the -o folder of a `medxai listen`",
        )
    store = NodeStore(workdir)
    try:
        return store.status(events)
    finally:
        store.close()


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"medxai.node.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medxai.node' has no attribute {name!r}")
