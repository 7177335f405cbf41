"""Event-driven loops for the threads of an accepted association.

pynetdicom 3 runs two polling loops per association. The DUL thread sleeps 1 ms whenever
a pass found nothing to do, and the association thread sleeps 1 ms before every look at
its queues. A C-STORE round trip crosses both loops twice (request in, response out), so
a sender waits up to ~4 ms per instance for sleeps to end, and the idle wake-ups (2,000 a
second per association) take the GIL from the thread doing real work. Shorter sleeps
only burn more CPU (measured: slower). Here the same loops block instead:

* the DUL thread in ``select()`` on its socket and on a wake-up pipe, which is written
  whenever another thread queues a primitive to send or asks the DUL to stop;
* the association thread on an ``Event``, set whenever a DIMSE message, an A-RELEASE or
  an A-ABORT reaches it, when it is killed, and when the DUL thread ends.

Both waits time out after ``TICK`` seconds, so pynetdicom's timers (ARTIM, network idle
timeout) are checked as before. The loop bodies are pynetdicom 3.0's own (MIT licence),
with only the waits changed; ``accept_with_events`` refuses any other class, and the
receive tests run every association through these loops.

The DUL thread also never blocks on a peer (``EventDrivenDUL._dn_receive``). pynetdicom
reads a PDU's 6-byte header, then ``recv(length)`` until the whole PDU is there: a peer that
sends a header and stops, or one byte every few seconds, holds that thread (and with it the
association slot, and the node's shutdown) for ever, and the length, up to 4 GiB, is the
peer's word. Here a PDU is read with non-blocking reads as its bytes arrive, between the
same ``select`` waits; its length is checked against the node's bound for its type before
anything is allocated; a PDU must be complete within the network timeout (before the
association, the ARTIM timer bounds the A-ASSOCIATE-RQ); the first invalid PDU is one log
line, an A-ABORT and the connection closed, whatever the peer still sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu import A_ABORT_RQ

from dicom_node.receive.guard import PeerLog

log = logging.getLogger(__name__)

# Longest wait without a wake-up: how late a timer (ARTIM, idle timeout) may be noticed.
TICK = 0.05

# PDU types (PS3.8 9.3) and the longest each may be, so a length header cannot make us
# allocate what the node would never accept. P-DATA-TF: the maximum PDU length we
# announced (the association's ``acceptor.maximum_length``; 0 announces "no limit").
# A-ASSOCIATE-RQ/AC: 128 presentation contexts, each offering every transfer syntax,
# plus user identity tokens (2 x 64 KiB) stay well under 1 MiB. The others have a fixed
# 4-byte body; 256 leaves room for a sloppy peer and nothing for an attack.
P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))
_ASSOCIATE_PDU_MAX = 1024 * 1024
_CONTROL_PDU_MAX = 256
# What is still read (unparsed) after an abort or release, before the connection closes:
# enough for a peer's own A-ABORT or A-RELEASE-RP, so closing does not reset the connection
# under the last PDU we sent; bounded, so a flood cannot keep the connection open.
_DRAIN_MAX = 64 * 1024
# States without an association (PS3.8 9.2): idle, awaiting the A-ASSOCIATE-RQ, closing.
_NOT_ASSOCIATED = frozenset({"Sta1", "Sta2", "Sta13"})

_DEFAULT_PEER_LOG = PeerLog(log)

# pynetdicom's own loggers, so messages read as they would without this module.
_ASSOC_LOG = logging.getLogger("pynetdicom.association")


class _SignallingQueue(queue.Queue[Any]):
    """A queue that calls ``notify`` after every ``put``, to wake the thread reading it;
    ``arrived``, if given, first sees each item in the putting thread."""

    def __init__(
        self,
        notify: Callable[[], None],
        replaces: queue.Queue[Any],
        arrived: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__()
        self._notify = notify
        self._arrived = arrived
        # Keep what was queued before the switch (the acceptor's socket queues Evt5).
        self.queue.extend(replaces.queue)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if self._arrived is not None:
            self._arrived(item)
        super().put(item, block, timeout)
        self._notify()


class _WakeupPipe:
    """The self-pipe trick: a byte written here ends the DUL thread's ``select``."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def wake(self) -> None:
        # A full pipe (BlockingIOError) already holds a pending wake-up.
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"\0")

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def __del__(self) -> None:
        # Only when nothing can write any more: a write to a closed (and reused) fd
        # would land in some other file.
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL provider whose idle wait is a ``select`` instead of a sleep, and
    whose PDU reads never block (module docstring)."""

    _wakeup: _WakeupPipe
    _dn_peer_log: PeerLog
    # The PDU being read: its 6-byte header, then the whole PDU once the length is known.
    _dn_head: bytearray
    _dn_head_got: int
    _dn_pdu: bytearray | None
    _dn_pdu_got: int
    _dn_pdu_started: float | None  # monotonic time its first byte arrived
    # Still waiting for the A-ASSOCIATE-RQ: the association thread blocks on
    # ``receive_pdu`` for it and must be woken if the connection ends first.
    _dn_awaiting_rq: bool
    _dn_close_requested: bool
    # Set once the connection is being ended (refused, timed out, stopped): nothing more
    # is read and late primitives are dropped. ``_dn_claim_close`` sets it under a lock,
    # so of the DUL's PDU deadline and the association's idle timeout, which expire
    # together for a stalled PDU, one writes the line.
    _dn_closing: bool
    _dn_close_lock: threading.Lock

    def _dn_setup(self, wakeup: _WakeupPipe, peer_log: PeerLog | None) -> None:
        self._wakeup = wakeup
        self._dn_peer_log = peer_log or _DEFAULT_PEER_LOG
        self._dn_head = bytearray(6)
        self._dn_head_got = 0
        self._dn_pdu = None
        self._dn_pdu_got = 0
        self._dn_pdu_started = None
        self._dn_awaiting_rq = True
        self._dn_close_requested = False
        self._dn_closing = False
        self._dn_close_lock = threading.Lock()

    # pynetdicom stops the loop by setting ``_kill_thread`` from other threads (kill_dul,
    # stop_dul): as a property, every such write also wakes the loop.
    @property
    def _kill_thread(self) -> bool:
        return bool(self.__dict__.get("_dn_kill_thread", False))

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_dn_kill_thread"] = value
        if value:
            self._wakeup.wake()

    def run(self) -> None:
        """The thread's body (pynetdicom bound the target before the class changed)."""
        try:
            self.run_reactor()
        finally:
            self._dn_release_waiting_acceptor()
            work = getattr(self.assoc, "_dn_work", None)
            if work is not None:
                work.set()  # the association checks ``dul.is_alive()`` next

    # -- what the node adds: peer, refusals, deadlines, closing ---------------------------
    @property
    def _dn_peer(self) -> str:
        try:
            return str(self.assoc.requestor.address)
        except (AttributeError, ValueError):
            return "?"

    def _dn_log(self, level: int, msg: str, *args: Any, exc_info: Any = None) -> None:
        """One line about this peer, through its per-host budget (``PeerLog``)."""
        self._dn_peer_log.log(
            level, self._dn_peer, "peer %s: " + msg, self._dn_peer, *args, exc_info=exc_info
        )

    def close_now(self) -> None:
        """Abort the association (if any) and close the connection; from any thread.

        For the node's shutdown: the DUL thread sends an A-ABORT (without waiting for the
        peer to read it) and closes the socket at its next pass, at most ``TICK`` later.
        """
        self._dn_close_requested = True
        self._wakeup.wake()

    def _dn_release_waiting_acceptor(self) -> None:
        """Wake an association thread still waiting for the A-ASSOCIATE-RQ once there will
        be none: pynetdicom would keep it (and its slot) for the whole ACSE timeout. A
        ``None`` reads as that timeout, whose path ends the thread cleanly."""
        if self._dn_awaiting_rq:
            self._dn_awaiting_rq = False
            self.to_user_queue.put(None)

    def _dn_after_action(self) -> None:
        state = self.state_machine.current_state
        if self._dn_awaiting_rq:
            if state == "Sta1":  # closed before any A-ASSOCIATE-RQ was delivered
                self._dn_release_waiting_acceptor()
            elif state not in _NOT_ASSOCIATED:  # Sta3: the A-ASSOCIATE indication is out
                self._dn_awaiting_rq = False

    def _dn_claim_close(self) -> bool:
        """Mark the connection as ending; True for the first caller only (any thread)."""
        with self._dn_close_lock:
            if self._dn_closing:
                return False
            self._dn_closing = True
            return True

    def _dn_refuse(self, msg: str, *args: Any) -> None:
        """The peer broke the protocol: one line, an A-ABORT (the state machine's answer to
        an invalid PDU, Evt19) and, at the next pass, the connection closed. Nothing if the
        connection is already ending."""
        self._dn_reset_pdu()
        if not self._dn_claim_close():
            return
        self._dn_log(logging.WARNING, msg + "; A-ABORT, connection closed", *args)
        state = self.state_machine.current_state
        # Sta1 with Evt5 still queued: the connection is new, the abort follows Evt5.
        if state == "Sta13" or (state == "Sta1" and self.event_queue.empty()):
            self._dn_close_transport(drain=False)
        else:
            self.event_queue.put("Evt19")

    def _dn_reset_pdu(self) -> None:
        self._dn_head_got = 0
        self._dn_pdu = None
        self._dn_pdu_got = 0
        self._dn_pdu_started = None

    def _dn_pdu_bound(self, pdu_type: int) -> int | None:
        """The longest PDU body of ``pdu_type`` we read (None: no bound)."""
        if pdu_type == P_DATA_TF:
            limit = int(getattr(self.assoc.acceptor, "maximum_length", 0) or 0)
            return limit or None
        if pdu_type in (0x01, 0x02):
            return _ASSOCIATE_PDU_MAX
        return _CONTROL_PDU_MAX

    def _dn_check_deadlines(self) -> None:
        """A PDU started must be complete within the network timeout (pynetdicom's idle
        timer restarts with every byte, so a trickle would never trip it). Before the
        association the ARTIM timer already bounds the A-ASSOCIATE-RQ."""
        started = self._dn_pdu_started
        if started is None or self.state_machine.current_state in _NOT_ASSOCIATED:
            return
        timeout = self.network_timeout
        if timeout is not None and time.monotonic() - started > timeout:
            self._dn_refuse(
                "PDU incomplete after %g s (%d of %s bytes; scp.network_timeout)",
                timeout,
                self._dn_pdu_got or self._dn_head_got,
                len(self._dn_pdu) if self._dn_pdu is not None else "?",
            )

    def _dn_close_transport(self, *, drain: bool) -> None:
        """Close the connection (Evt17 follows), first reading at most ``_DRAIN_MAX``
        pending bytes unparsed when ``drain``; never blocks."""
        transport = self.socket
        sock = transport.socket if transport is not None else None
        if transport is None or sock is None:
            return
        if drain and not isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError):
                left = _DRAIN_MAX
                while left > 0:
                    chunk = sock.recv(min(left, 16384), socket.MSG_DONTWAIT)
                    if not chunk:
                        break
                    left -= len(chunk)
        # pynetdicom's close() skips close() when shutdown() fails (peer already gone).
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        transport.close()  # bookkeeping: socket None, Evt17 queued

    def _dn_close_for_stop(self) -> None:
        """The node stops: A-ABORT (service user) if associated, then close."""
        self._dn_close_requested = False
        self._dn_claim_close()
        self._dn_reset_pdu()
        transport = self.socket
        sock = transport.socket if transport is not None else None
        if sock is None:
            return
        if self.state_machine.current_state not in _NOT_ASSOCIATED:
            abort = A_ABORT_RQ()
            abort.source = 0x00
            abort.reason_diagnostic = 0x00
            # Not through the state machine's send: it would block on a peer that does
            # not read. Whatever does not fit the socket buffer now is not sent.
            with contextlib.suppress(OSError, ValueError):
                if isinstance(sock, ssl.SSLSocket):
                    sock.settimeout(0)
                    sock.send(abort.encode())
                else:
                    sock.send(abort.encode(), socket.MSG_DONTWAIT)
        self._dn_close_transport(drain=False)

    # -- reading ------------------------------------------------------------------------
    def _is_transport_event(self) -> bool:
        """pynetdicom 3.0's ``_is_transport_event``: Sta13 closes the connection (after a
        bounded, unparsed drain: nothing the peer sends now changes anything), otherwise
        whatever arrived is read without blocking. True when something was read or closed.
        """
        if self.state_machine.current_state == "Sta13":
            if self.socket is not None and self.socket.socket is not None:
                self._dn_close_transport(drain=not self._dn_closing)
                return True
            return False
        if self._dn_closing:  # refused: nothing more is read, the abort is on its way
            return False
        transport = self.socket
        if transport is None or transport.socket is None or not transport._is_connected:
            return False
        return self._dn_receive()

    def _dn_receive(self) -> bool:
        """Read what has arrived of the current PDU without blocking; queue its event once
        it is complete. Returns whether anything arrived (or the connection ended)."""
        transport = cast(Any, self.socket)
        sock = transport.socket
        tls = isinstance(sock, ssl.SSLSocket)
        # A TLS socket takes no MSG_DONTWAIT: it is made non-blocking for the reads only (the
        # DUL thread, this one, is the socket's only user; its sends stay blocking) and an
        # incomplete TLS record reads as SSLWantReadError. Same bounds as plain DICOM then:
        # the PDU length checked from its header, the PDU's deadline (scp.network_timeout).
        flags = 0 if tls else socket.MSG_DONTWAIT
        previous_timeout = sock.gettimeout() if tls else None
        if tls:
            sock.settimeout(0.0)
        arrived = False
        try:
            while True:
                pdu = self._dn_pdu
                if pdu is None:
                    got = self._dn_head_got
                    with memoryview(self._dn_head) as view:
                        count = sock.recv_into(view[got:], 6 - got, flags)
                    if not count:
                        self._dn_peer_closed()
                        return True
                    arrived = True
                    if self._dn_pdu_started is None:
                        self._dn_pdu_started = time.monotonic()
                    self._dn_head_got = got = got + count
                    if got < 6:
                        continue
                    if not self._dn_start_pdu():
                        return True
                    continue
                got = self._dn_pdu_got
                if got < len(pdu):
                    with memoryview(pdu) as view:
                        count = sock.recv_into(view[got:], len(pdu) - got, flags)
                    if not count:
                        self._dn_peer_closed()
                        return True
                    arrived = True
                    self._dn_pdu_got = got = got + count
                if got == len(pdu):
                    self._dn_reset_pdu()
                    self._dn_decode(pdu)
                    return True
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return arrived
        except ssl.SSLZeroReturnError:  # the peer ended TLS (close_notify): it closed
            self._dn_peer_closed()
            return True
        except OSError:  # reset by the peer, or closed under us by close_now's fallback
            self._dn_reset_pdu()
            transport.close()
            return True
        finally:
            if tls:
                with contextlib.suppress(OSError):  # closed meanwhile
                    sock.settimeout(previous_timeout)

    def _dn_start_pdu(self) -> bool:
        """The header is complete: check type and length, then allocate the PDU."""
        pdu_type, _, length = struct.unpack(">BBL", self._dn_head)
        if pdu_type not in _PDU_TYPES:
            self._dn_refuse("unknown PDU type 0x%02X (not DICOM, or out of step)", pdu_type)
            return False
        bound = self._dn_pdu_bound(pdu_type)
        if bound is not None and length > bound:
            setting = " (scp.max_pdu_size)" if pdu_type == P_DATA_TF else ""
            self._dn_refuse(
                "PDU type 0x%02X of %d bytes, over the %d accepted%s",
                pdu_type,
                length,
                bound,
                setting,
            )
            return False
        pdu = bytearray(6 + length)
        pdu[:6] = self._dn_head
        self._dn_pdu = pdu
        self._dn_pdu_got = 6
        return True

    def _dn_decode(self, pdu: bytearray) -> None:
        """pynetdicom's ``_read_pdu_data`` from the decoding on: event, then the PDU."""
        try:
            decoded, event = self._decode_pdu(pdu)
        except Exception as exc:
            self._dn_refuse(
                "invalid PDU type 0x%02X (%d bytes): %s", pdu[0], len(pdu), type(exc).__name__
            )
            return
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    def _dn_peer_closed(self) -> None:
        """The peer closed the connection (Evt17); inside a PDU, that is worth a line."""
        if self._dn_head_got or self._dn_pdu is not None:
            self._dn_log(
                logging.INFO,
                "connection closed inside a PDU (%d bytes of it received)",
                self._dn_pdu_got or self._dn_head_got,
            )
        self._dn_reset_pdu()
        self._dn_close_transport(drain=False)

    def _wait_for_work(self) -> None:
        """Block until the socket is readable, a wake-up arrives or ``TICK`` passes."""
        transport = self.socket
        sock = transport.socket if transport is not None else None
        if sock is None:
            time.sleep(self._run_loop_delay)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: select() would not see them
        try:
            select.select([sock.fileno(), self._wakeup.read_fd], [], [], TICK)
        except (OSError, ValueError):  # socket closed meanwhile: the loop notices
            time.sleep(self._run_loop_delay)
            return
        self._wakeup.drain()

    def run_reactor(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor`` with an event-driven wait."""
        self._idle_timer.start()
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._wait_for_work()

            if self._kill_thread:
                break

            # (node) Shutdown, then the deadline of a PDU being read.
            if self._dn_close_requested:
                self._dn_close_for_stop()
            self._dn_check_deadlines()

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                if self.state_machine.current_state == "Sta2" and self._dn_claim_close():
                    self._dn_log(
                        logging.WARNING,
                        "no complete A-ASSOCIATE-RQ within %g s (scp.acse_timeout); "
                        "connection closed",
                        self.artim_timer.timeout or 0,
                    )
                self.event_queue.put("Evt18")

            try:
                # (node) Once the association is over, primitives the association thread
                # still queues (a late response) have no valid event: drop them, as
                # pynetdicom's state machine would raise on them.
                if self._dn_closing and self.state_machine.current_state in ("Sta1", "Sta13"):
                    with self.to_provider_queue.mutex:
                        self.to_provider_queue.queue.clear()
                # Either encode and send a primitive or receive and decode a PDU
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                self._dn_fail(exc)
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            # (node) The association is over (idle, or closing after an abort): an event
            # with no transition there (a second close indication, the association
            # thread's own late abort) changes nothing; pynetdicom's state machine would
            # raise on it.
            state = self.state_machine.current_state
            if state in ("Sta1", "Sta13") and (event, state) not in TRANSITION_TABLE:
                continue
            try:
                self.state_machine.do_action(event)
            except Exception as exc:  # (node) upstream lets this end the thread unlogged
                self._dn_fail(exc)
                return
            self._dn_after_action()
            sleep = False

    def _dn_fail(self, exc: Exception) -> None:
        """pynetdicom's handling of an exception in its loop, with one line through the
        peer's log budget instead of pynetdicom's two (one a traceback) per occurrence."""
        self._dn_log(
            logging.ERROR,
            "error in the DUL, association aborted: %s",
            type(exc).__name__,
            exc_info=exc,
        )
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        if self.socket is not None and self.socket.socket is not None:
            self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class EventDrivenAssociation(Association):
    """pynetdicom's acceptor whose reactor waits on an ``Event`` instead of sleeping."""

    _dn_work: threading.Event
    _dn_on_end: Callable[[], None] | None = None

    def run(self) -> None:
        """The thread's body; ``on_end`` (``accept_with_events``) runs as it ends."""
        try:
            super().run()
        finally:
            if self._dn_on_end is not None:
                self._dn_on_end()

    def kill(self) -> None:
        self._dn_work.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's ``Association._run_reactor`` with an event-driven wait."""
        self._is_paused = False
        while not self._kill:
            self._dn_work.wait(TICK)
            self._dn_work.clear()  # before looking: a later put sets it again

            # Pause point for the send_*() methods (pynetdicom's checkpoint)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._dn_work.set()  # more may be queued: look again without waiting
                self._serve_request(msg, int(context_id))  # type: ignore[arg-type]

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _ASSOC_LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _ASSOC_LOG.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                # (node) One line through the peer's log budget, naming the setting.
                dul = cast(EventDrivenDUL, self.dul)
                if dul._dn_claim_close():
                    dul._dn_log(
                        logging.WARNING,
                        "nothing received for %g s (scp.network_timeout); association aborted",
                        self.network_timeout or 0,
                    )
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


def accept_with_events(
    assoc: Association,
    on_message: Callable[[Any], None] | None = None,
    *,
    peer_log: PeerLog | None = None,
    on_end: Callable[[], None] | None = None,
) -> bool:
    """Switch a new, not yet started acceptor to the event-driven loops.

    ``on_message`` is called in the DUL thread with each complete DIMSE message, as a
    ``(context_id, primitive)`` pair, just before the association thread is woken for it:
    the receive path starts the incoming file's fsync there. It must not raise.
    ``peer_log`` takes the lines this peer causes (and pynetdicom's, see
    ``cap_pynetdicom_logs``); ``on_end`` is called as the association thread ends (the
    server frees the connection's slot there). The DUL thread becomes a daemon, so a
    process that exits never waits on a peer.

    Returns False (and changes nothing) for anything but pynetdicom's own classes, e.g.
    after an upgrade that subclassed them: the polling loops then stay, slower but correct.
    """
    dul = assoc.dul
    if type(assoc) is not Association or type(dul) is not DULServiceProvider:
        return False
    if assoc.is_alive() or dul.is_alive():
        return False
    work = threading.Event()
    wakeup = _WakeupPipe()
    kill_flag = bool(dul.__dict__.pop("_kill_thread", False))
    dul.__class__ = EventDrivenDUL
    event_dul = cast(EventDrivenDUL, dul)
    event_dul._dn_setup(wakeup, peer_log)
    event_dul._kill_thread = kill_flag
    event_dul.daemon = True

    def wake_from_elsewhere() -> None:
        # The DUL queues its own transport events and handles them in the same pass.
        if threading.current_thread() is not event_dul:
            wakeup.wake()

    # Whatever another thread queues for the DUL (primitives to send, transport events)
    # wakes it; whatever the DUL delivers to the association wakes that.
    event_dul.to_provider_queue = _SignallingQueue(wakeup.wake, dul.to_provider_queue)
    event_dul.event_queue = _SignallingQueue(wake_from_elsewhere, dul.event_queue)
    event_dul.to_user_queue = _SignallingQueue(work.set, dul.to_user_queue)
    assoc.dimse.msg_queue = _SignallingQueue(work.set, assoc.dimse.msg_queue, on_message)
    assoc.__class__ = EventDrivenAssociation
    cast(EventDrivenAssociation, assoc)._dn_work = work
    cast(EventDrivenAssociation, assoc)._dn_on_end = on_end
    return True


class _PeerBudget(logging.Filter):
    """Lets pynetdicom's records from the node's association threads through only within
    their peer's ``PeerLog`` budget; records from any other thread pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        thread = threading.current_thread()
        if isinstance(thread, EventDrivenAssociation):
            dul: Any = thread.dul
        elif isinstance(thread, EventDrivenDUL):
            dul = thread
        else:
            return True
        peer_log = getattr(dul, "_dn_peer_log", None)
        if peer_log is None:
            return True
        admitted, _ = peer_log.admit(dul._dn_peer)
        return admitted


_PEER_BUDGET = _PeerBudget()


def cap_pynetdicom_logs() -> None:
    """Put pynetdicom's own loggers (one per module) under each peer's log budget.

    pynetdicom writes an ERROR line, often with a traceback, for each bad thing a peer
    does; a peer doing it in a loop would write without bound. Idempotent.
    """
    import pynetdicom  # noqa: F401  (its modules' loggers exist once it is imported)

    names = [
        name
        for name in logging.Logger.manager.loggerDict
        if name == "pynetdicom" or name.startswith("pynetdicom.")
    ]
    for name in names:
        logger = logging.getLogger(name)
        if _PEER_BUDGET not in logger.filters:
            logger.addFilter(_PEER_BUDGET)
