"""The event-driven association loops: used for every accepted association, and pynetdicom's
behaviour kept (echo, release, peer abort, network idle timeout) over real sockets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.receive import pynetdicom_ext
from dicom_node.receive.pynetdicom_ext.encoding import DirectResponseDIMSE
from dicom_node.receive.pynetdicom_ext.reactors import (
    EventDrivenAssociation,
    EventDrivenDUL,
    accept_with_events,
)


@pytest.fixture
def server() -> Iterator[tuple[ThreadedAssociationServer, list[Any], AE]]:
    """A pynetdicom server with the node's request handler; records each association."""
    seen: list[Any] = []
    ae = AE(ae_title="REACTOR")
    ae.add_supported_context(Verification)
    ae.network_timeout = 1.5

    def on_echo(event: Any) -> int:
        seen.append(event.assoc)
        return 0x0000

    srv = ae.make_server(
        ("127.0.0.1", 0),
        evt_handlers=[(evt.EVT_C_ECHO, on_echo), (evt.EVT_ACCEPTED, seen.append)],
        server_class=pynetdicom_ext.server_class(),
        request_handler=pynetdicom_ext.NodeRequestHandler,
    )
    ae._servers.append(srv)  # as StoreSCP.start does: shutdown() removes it from there
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, seen, ae
    srv.shutdown()


def _associate(srv: ThreadedAssociationServer) -> Association:
    scu = AE(ae_title="SCU")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", srv.server_address[1], ae_title="REACTOR")
    assert assoc.is_established
    return assoc


def _wait_until(condition: Any, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_accepted_associations_run_the_event_driven_loops(server: Any) -> None:
    srv, seen, _ae = server
    assoc = _associate(srv)
    for _ in range(20):  # several round trips on one association
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    acceptor = seen[-1]
    assert type(acceptor) is EventDrivenAssociation
    assert type(acceptor.dul) is EventDrivenDUL
    assert type(acceptor.dimse) is DirectResponseDIMSE
    # Both acceptor threads end once the association is released.
    assert _wait_until(lambda: not acceptor.is_alive() and not acceptor.dul.is_alive())


def test_peer_abort_ends_the_acceptor(server: Any) -> None:
    srv, seen, _ae = server
    assoc = _associate(srv)
    assert assoc.send_c_echo().Status == 0x0000
    acceptor = seen[-1]
    assoc.abort()
    assert _wait_until(lambda: not acceptor.is_alive() and not acceptor.dul.is_alive())
    assert acceptor.is_aborted
    # The server still accepts new associations.
    again = _associate(srv)
    assert again.send_c_echo().Status == 0x0000
    again.release()


def test_network_idle_timeout_still_fires(server: Any) -> None:
    """The waits time out (TICK), so pynetdicom's idle timer is still checked."""
    srv, seen, _ae = server
    assoc = _associate(srv)
    assert assoc.send_c_echo().Status == 0x0000
    acceptor = seen[-1]
    # Stay silent past the server's 1.5 s network timeout: it aborts the association.
    assert _wait_until(lambda: not acceptor.is_alive(), seconds=30)
    assert _wait_until(lambda: not assoc.is_established, seconds=30)


def test_only_new_pynetdicom_acceptors_are_switched() -> None:
    ae = AE()

    class Custom(Association):
        pass

    custom = Custom(ae, "acceptor")
    assert not accept_with_events(custom)
    assert type(custom) is Custom
