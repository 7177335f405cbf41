"""Every change the node makes to pynetdicom's and pydicom's internals, in one place.

The receive path is fast and memory-flat because it reaches into pynetdicom 3.0: its
association loops (``reactors``), its socket and request handler (``transport``), the
encodings it makes for each C-STORE (``encoding``) and the temporary file it streams a
dataset into. Such changes break silently when upstream moves, so they are fenced:

* this package is the only code that replaces or subclasses those internals;
* ``install()`` is the only process-wide switch, called explicitly by the receiver; it
  refuses a pynetdicom version that was not checked (``SUPPORTED_PYNETDICOM``);
* ``upstream.UPSTREAM`` holds a hash of the source of every upstream function this
  package copies, replaces, overrides or relies on; a test fails when any of them
  changes, so an upgrade is reviewed here;
* whatever is per receiver (its spool folder, its callbacks) rides on the association,
  not on a global: two receivers, or a receiver and the demo PACS, share one process.
"""

from __future__ import annotations

import tempfile
import threading
from typing import Any

import pynetdicom
from pydicom import config as pydicom_config
from pynetdicom import _config
from pynetdicom import dimse_messages as _dimse_messages

from dicom_node.receive.pynetdicom_ext import encoding
from dicom_node.receive.pynetdicom_ext.reactors import cap_pynetdicom_logs
from dicom_node.receive.pynetdicom_ext.transport import (
    INCOMING_FILE_ATTR,
    NodeAssociationServer,
    NodeRequestHandler,
    server_class,
)

__all__ = [
    "SUPPORTED_PYNETDICOM",
    "NodeAssociationServer",
    "NodeRequestHandler",
    "UnsupportedVersionError",
    "configure_pydicom",
    "incoming_file",
    "install",
    "installed",
    "server_class",
]

# Versions whose internals these extensions were read against (see upstream.UPSTREAM).
SUPPORTED_PYNETDICOM = ("3.0.4",)


class UnsupportedVersionError(RuntimeError):
    """pynetdicom is not a version the extensions were checked against.

    The message is one line for an operator: the installed version, the checked ones and
    the command that installs one (the receiver reports it as a configuration problem).
    """


_installed = False
_install_lock = threading.Lock()


def configure_pydicom() -> None:
    """The pydicom settings of every process that reads received files.

    The receiver, the workers and the tests read DICOM the same way: UIDs that matter are
    validated by the node itself (``spool.valid_uid``); pydicom's per-value validation of
    every element read costs ~0.5 ms per instance and would only warn.
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def incoming_file(**kwargs: Any) -> Any:
    """Stands in for ``NamedTemporaryFile`` where pynetdicom opens a C-STORE's file.

    pynetdicom calls it in the DUL thread of the association that receives the dataset
    (``DIMSEMessage.decode_msg``); that association's own factory decides where the bytes
    go. Associations of other servers in the process (the demo PACS, a test peer) get
    pynetdicom's own temporary file.
    """
    dul = threading.current_thread()
    factory = getattr(getattr(dul, "assoc", None), INCOMING_FILE_ATTR, None)
    if factory is not None:
        return factory(**kwargs)
    return tempfile.NamedTemporaryFile(**kwargs)


def install() -> None:
    """Switch pynetdicom to the node's receive path; idempotent.

    Raises
    ------
    UnsupportedVersionError
        The installed pynetdicom was not checked against these extensions.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        version = str(pynetdicom.__version__)
        if version not in SUPPORTED_PYNETDICOM:
            # Checked before anything changes: a refused install leaves pynetdicom as it was.
            raise UnsupportedVersionError(
                f"pynetdicom {version} is installed, but dicom-node's receive path was "
                f"checked against {', '.join(SUPPORTED_PYNETDICOM)} only: install that "
                f"(pip install 'pynetdicom=={SUPPORTED_PYNETDICOM[-1]}')"
            )
        configure_pydicom()
        # Stream each dataset to a file while it arrives instead of RAM; where the file is
        # opened is the association's choice (incoming_file above).
        _config.STORE_RECV_CHUNKED_DATASET = True
        _dimse_messages.NamedTemporaryFile = incoming_file  # type: ignore[assignment]
        # The incoming file's File Meta, written with struct (byte-identical, tested).
        _dimse_messages.create_file_meta = encoding.create_file_meta  # type: ignore[assignment]
        _dimse_messages.write_file_meta_info = encoding.write_file_meta_info
        # pynetdicom's own lines about the node's associations, under each peer's budget.
        cap_pynetdicom_logs()
        _installed = True


def installed() -> bool:
    """Whether ``install()`` has run in this process."""
    return _installed
