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
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

log = logging.getLogger(__name__)

# Longest wait without a wake-up: how late a timer (ARTIM, idle timeout) may be noticed.
TICK = 0.05

# pynetdicom's own loggers, so messages read as they would without this module.
_DUL_LOG = logging.getLogger("pynetdicom.dul")
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
    """pynetdicom's DUL provider whose idle wait is a ``select`` instead of a sleep."""

    _wakeup: _WakeupPipe

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
            work = getattr(self.assoc, "_dn_work", None)
            if work is not None:
                work.set()  # the association checks ``dul.is_alive()`` next

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

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                # Either encode and send a primitive or receive and decode a PDU
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                _DUL_LOG.error("Exception in DUL.run(), aborting association")
                _DUL_LOG.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class EventDrivenAssociation(Association):
    """pynetdicom's acceptor whose reactor waits on an ``Event`` instead of sleeping."""

    _dn_work: threading.Event

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
                _ASSOC_LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


def accept_with_events(assoc: Association, on_message: Callable[[Any], None] | None = None) -> bool:
    """Switch a new, not yet started acceptor to the event-driven loops.

    ``on_message`` is called in the DUL thread with each complete DIMSE message, as a
    ``(context_id, primitive)`` pair, just before the association thread is woken for it:
    the receive path starts the incoming file's fsync there. It must not raise.

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
    event_dul._wakeup = wakeup
    event_dul._kill_thread = kill_flag

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
    return True
