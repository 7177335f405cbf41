"""The upstream code the extensions copy, replace, override or lean on, pinned by hash.

Every function of pynetdicom (and one of pydicom) whose body or behaviour this package
depends on is listed here with the SHA-256 of its source (``inspect.getsource``). A test
(``tests/receive/test_pynetdicom_ext.py``) recomputes them: when an upgrade changes any of
them, it fails and names the function, so the change is read against our copy before the
hash is updated. A version outside ``SUPPORTED_PYNETDICOM`` is refused by ``install()``
anyway; the hashes also catch a patched or vendored copy that kept its version number.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Upstream:
    """One upstream object and why the extensions depend on its exact source.

    Attributes
    ----------
    name
        Dotted path: a module, then attributes (methods resolve through the MRO, so an
        inherited one is pinned where it is really defined).
    sha256
        Hex SHA-256 of ``inspect.getsource`` of the object (a property's getter).
    reason
        What in this package depends on it.
    """

    name: str
    sha256: str
    reason: str


UPSTREAM: tuple[Upstream, ...] = (
    # -- reactors.py: the event-driven loops ----------------------------------------
    Upstream(
        "pynetdicom.dul.DULServiceProvider.run_reactor",
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
        "copied into EventDrivenDUL.run_reactor with the 1 ms sleep replaced by a select",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider.__init__",
        "c82dafa9438ddf70685917cb15d2bfbc814aa0ad5233ffb0ae650faedc7570f0",
        "binds the thread target and creates the queues and _kill_thread that "
        "accept_with_events replaces (EventDrivenDUL.run, _SignallingQueue, property)",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider.run",
        "a161d0cc851c01c404d61fa420cb0e0b2ef6fab260623b65ead501c110eed311",
        "threading's (pynetdicom defines none), overridden by EventDrivenDUL.run as the "
        "target was bound to the old run_reactor (no PASS_CONTEXTVARS context then)",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider.kill_dul",
        "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
        "stops the DUL by writing _kill_thread, which EventDrivenDUL turns into a wake-up",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider.stop_dul",
        "28a7e0be126e7b306369cc1b131daec8e907d21d0f5692930133b6599b8c6e5f",
        "stops the DUL by writing _kill_thread, which EventDrivenDUL turns into a wake-up",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider.send_pdu",
        "7cbce5da8594124e9e70c790a68df640d21df11af4220783e752bc607de8dde6",
        "every primitive to send goes through to_provider_queue.put, which wakes the DUL",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider._is_transport_event",
        "8725ed03bb8fbdefef249d5d9888c120e6277d7b6aa2c4f537e23027186e1253",
        "overridden by EventDrivenDUL._is_transport_event: same Sta13 rule (close once "
        "nothing is pending, here after a bounded drain), other states read without blocking",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider._read_pdu_data",
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
        "replaced for plain sockets by EventDrivenDUL._dn_receive, which queues the same "
        "events (Evt17 closed, Evt19 invalid, decoded PDU on _recv_pdu); still used for TLS",
    ),
    Upstream(
        "pynetdicom.dul.DULServiceProvider.receive_pdu",
        "fa67339834ca998cb31eb1806a854864200464b0a9991333d387aa419478c4e6",
        "returns a None put on to_user_queue as it returns a timeout: how EventDrivenDUL "
        "wakes an acceptor waiting for an A-ASSOCIATE-RQ that will not come",
    ),
    Upstream(
        "pynetdicom.fsm.StateMachine.do_action",
        "9a883f44c7f31641b7847b97b51a72abdd31a3c8a9d31031cae7f7d929383dd9",
        "raises on an event invalid in the state: EventDrivenDUL drops such events in "
        "Sta1/Sta13 (TRANSITION_TABLE) and late primitives once closing, and turns any "
        "other raise into one line and an A-ABORT",
    ),
    Upstream(
        "pynetdicom.fsm.AA_1",
        "8495a4665f7ad3c96c426eb10dfd0ee6864e630d6e17918a3fd3393ec0b1781a",
        "Evt19 before the association: sends the A-ABORT our refusals rely on, then Sta13",
    ),
    Upstream(
        "pynetdicom.fsm.AA_8",
        "06c83317f08831fd81094251174df02baf388a9863496370abbef6e327c9fb74",
        "Evt19 in an association: A-ABORT, A-P-ABORT to the association thread, then Sta13",
    ),
    Upstream(
        "pynetdicom.association.Association._run_reactor",
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
        "copied into EventDrivenAssociation._run_reactor with the sleep replaced by an Event",
    ),
    Upstream(
        "pynetdicom.association.Association.kill",
        "8f9713666a7f4cffd840899f023090e9786668945a7c844f99d7a834077c3972",
        "overridden by EventDrivenAssociation.kill, which wakes the loop before calling it",
    ),
    Upstream(
        "pynetdicom.association.Association.run_reactor",
        "ed8bbbe3b3d6ddaee3e8673ba25b2ab2a4c45f25bc1d8ae7b48ebafd09499e6d",
        "the acceptor thread's body: must reach self._run_reactor (ours after the switch), "
        "and end cleanly on a None from receive_pdu (EventDrivenDUL's wake-up)",
    ),
    Upstream(
        "pynetdicom.association.Association.run",
        "a161d0cc851c01c404d61fa420cb0e0b2ef6fab260623b65ead501c110eed311",
        "threading's, overridden by EventDrivenAssociation.run to call on_end as the "
        "thread ends (the connection's slot is freed there)",
    ),
    Upstream(
        "pynetdicom.association.Association._bind_defaults",
        "4cada43c3a1937240a09fdb33edfe2eeb1924a627b13a4e4471cd26f41fd2bf8",
        "binds the standard log handlers that NodeRequestHandler unbinds",
    ),
    # -- encoding.py: the direct encodings ------------------------------------------
    Upstream(
        "pynetdicom.dimse.DIMSEServiceProvider.send_msg",
        "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
        "overridden by DirectResponseDIMSE, which must send what it would for a C-STORE-RSP "
        "or a C-ECHO-RSP",
    ),
    Upstream(
        "pynetdicom.service_class.VerificationServiceClass.SCP",
        "d30d511f87d0268dd6013bb395c343029824b835024b70fcc7ca66088e8f787e",
        "sends the C-ECHO response through send_msg, which DirectResponseDIMSE encodes",
    ),
    Upstream(
        "pynetdicom.dimse.DIMSEServiceProvider.maximum_pdu_size",
        "600fc7073d35ccd6c99ef1959551f308544b4fc0156fa6afde7fa536318622bf",
        "the peer's maximum, which DirectResponseDIMSE checks its one P-DATA against",
    ),
    Upstream(
        "pynetdicom.dimse_messages.DIMSEMessage.encode_msg",
        "73000c902c52832dab302ddb3bc274ea93d205a810a197225dd87d4c1212ba57",
        "how a command set becomes PDVs (header 0x03 on the last), as DirectResponseDIMSE",
    ),
    Upstream(
        "pynetdicom.dsutils.create_file_meta",
        "035ed415f5aeea15543cca3b0b7b2b6d5a3189bc807a0211f5c633bb356ab9e3",
        "replaced in dimse_messages by encoding.create_file_meta (same arguments)",
    ),
    Upstream(
        "pydicom.filewriter.write_file_meta_info",
        "0568f3155349513bbef9976e179831f8aa76591e0adaa36566a1a17947c667e5",
        "replaced in dimse_messages by encoding.write_file_meta_info (same bytes, tested)",
    ),
    # -- __init__.py / incoming files: the temp-file factory -------------------------
    Upstream(
        "pynetdicom.dimse_messages.DIMSEMessage.decode_msg",
        "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
        "calls the module's NamedTemporaryFile, create_file_meta and write_file_meta_info "
        "that install() replaces, and .file.flush() after each fragment",
    ),
    Upstream(
        "pynetdicom.dimse.DIMSEServiceProvider.receive_primitive",
        "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f",
        "runs decode_msg in the DUL thread (incoming_file finds the association there) "
        "and puts complete messages on msg_queue (our queue wakes the association)",
    ),
    Upstream(
        "pynetdicom.dimse_messages.DIMSEMessage.message_to_primitive",
        "f8f43d34e43450efa31bd308677b85b370f8ca7600c0e067e854f8095ce665ac",
        "puts the incoming file on the request as _dataset_file, which the handler reads",
    ),
    Upstream(
        "pynetdicom.service_class.StorageServiceClass.SCP",
        "63afca7fc6c6e7ee6e6eb303dd6aa72c1e69dbfcb94dd91c9e90ea6d900a4c40",
        "closes the incoming file and unlinks its name after the handler (IncomingFile)",
    ),
    # -- transport.py: the socket, request handler and server ------------------------
    Upstream(
        "pynetdicom.transport.AssociationSocket.close",
        "c726c8db53813d551475b8b4560634708a64c50bfe818fd2d1df1c06bdeec099",
        "called by EventDrivenDUL after it closed the OS socket itself: sets socket to "
        "None and queues Evt17",
    ),
    Upstream(
        "pynetdicom.transport.AssociationSocket.ready",
        "3eb58e3d39dc076df7a04c804ca183ffd3f4d1b34361039e9e6f11de3d45579c",
        "the readiness test EventDrivenDUL's select must agree with (incl. TLS pending)",
    ),
    Upstream(
        "pynetdicom.transport.AssociationSocket.event_queue",
        "dfb0e894161db1ed498c90127bd0e73405885b2b169fc7ef72d96f918655ebaa",
        "looked up on the DUL at each put, so the replaced event_queue sees socket events",
    ),
    Upstream(
        "pynetdicom.transport.RequestHandler._create_association",
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
        "overridden by NodeRequestHandler, which switches the new association it returns; "
        "deep-copies server.contexts, which _SharedContexts makes a plain list copy",
    ),
    Upstream(
        "pynetdicom.transport.RequestHandler.handle",
        "034823fb4df3a87467bd0d45193f0d457fcf59c87fda8e97b2edfb89426f76dd",
        "overridden by NodeRequestHandler.handle, which frees the slot if it raises",
    ),
    Upstream(
        "pynetdicom.presentation.negotiate_as_acceptor",
        "d5413f08f0ac7b32b2b95f629d88242be5785d4a37888a14c265e0c27452da05",
        "only reads the acceptor's contexts, so associations may share the server's",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.__init__",
        "edacb98bdfb7b9744194698d47fa51d4e2d5c9ed02ef5fb5181f381b31118423",
        "sets self.contexts, which NodeAssociationServer wraps in _SharedContexts",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.get_request",
        "925a4f3a3042f6e4b944505d06dc19c41e10ff7dec5385c794d62d31fd000300",
        "overridden by NodeAssociationServer.get_request: the same accept and wrap, with "
        "the TLS handshake left to the connection's thread",
    ),
    Upstream(
        "pynetdicom.transport.RequestHandler.handle",
        "034823fb4df3a87467bd0d45193f0d457fcf59c87fda8e97b2edfb89426f76dd",
        "overridden by NodeRequestHandler.handle, which completes the TLS handshake first",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.process_request_thread",
        "9e76e9b9c8a3d8b18bb1df7ac652c86f21b4aaaf39e10deca9312f91a7c21a8a",
        "runs NodeRequestHandler.handle in the connection's thread (so the TLS handshake "
        "runs there) and does not close the socket after it: a refused one is closed by us",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.verify_request",
        "b7e67354b3bc518a64b0e4e18a90f39eaf810efb2e2b3460fff116136d4bd75e",
        "overridden for the host allow-list and the association limits; socketserver's",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.shutdown_request",
        "9673c0ac3021d210ddb48376920ca1d6d0213f57d77157d0f7e063f156cb44b1",
        "overridden to free the slot of a connection whose handler never ran; socketserver's",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.process_request",
        "38982c1475b097ae46eb82101dd43a99fab93a6d8fe9e142dfc87ad59f0ced8c",
        "overridden to run process_request_thread in the accepting thread; socketserver's "
        "ThreadingMixIn",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.process_request_thread",
        "9e76e9b9c8a3d8b18bb1df7ac652c86f21b4aaaf39e10deca9312f91a7c21a8a",
        "called inline by NodeAssociationServer.process_request: builds and starts the "
        "association, closes the socket on error",
    ),
    Upstream(
        "pynetdicom.transport.ThreadedAssociationServer.service_actions",
        "0a0853a3615ac7c5260a57dcdc8b0e9908d655919b7d64737c89534869758873",
        "overridden with nothing: its forced gc.collect() every 60 accept-loop passes",
    ),
)


def resolve(name: str) -> object:
    """The object a dotted ``name`` refers to: the longest importable module, then attributes."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no module in {name!r}")


def source_sha256(name: str) -> str:
    """SHA-256 of the source of ``name`` as it is installed now (a property's getter)."""
    obj = resolve(name)
    if isinstance(obj, property) and obj.fget is not None:
        obj = obj.fget
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()  # type: ignore[arg-type]
