"""The bus's meeting point: an XSUB/XPUB forwarder between publishers and subscribers.

Publishers connect to the *frontend* (XSUB), subscribers to the *backend* (XPUB);
subscriptions travel upstream, messages downstream, so neither side needs to know the
other's address. Run it as ``python -m speckleflow.streaming.proxy``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, Self

import zmq

from .curve import CurveConfig, stop_authenticators
from .publisher import DEFAULT_HWM

__all__ = ["DEFAULT_BACKEND", "DEFAULT_FRONTEND", "ProxyThread", "main", "run_proxy"]

logger = logging.getLogger(__name__)

DEFAULT_FRONTEND = "tcp://127.0.0.1:5559"
DEFAULT_BACKEND = "tcp://127.0.0.1:5560"

_ids = itertools.count()


def _bind_pair(
    context: zmq.Context, frontend: str, backend: str, hwm: int, curve: CurveConfig | None = None,
    sndbuf: int = 0,
) -> tuple[zmq.Socket, zmq.Socket]:
    xsub = context.socket(zmq.XSUB)
    xpub = context.socket(zmq.XPUB)
    try:
        for socket in (xsub, xpub):
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, hwm)
            socket.setsockopt(zmq.RCVHWM, hwm)
            if curve is not None:
                curve.secure_server(socket)
        if sndbuf > 0:
            xpub.setsockopt(zmq.SNDBUF, sndbuf)
        xsub.bind(frontend)
        xpub.bind(backend)
    except Exception:
        xsub.close(linger=0)
        xpub.close(linger=0)
        raise
    return xsub, xpub


def _endpoint(socket: zmq.Socket) -> str:
    endpoint = socket.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


def run_proxy(
    frontend: str,
    backend: str,
    *,
    context: zmq.Context | None = None,
    hwm: int = DEFAULT_HWM,
    curve: CurveConfig | None = None,
    sndbuf: int = 0,
) -> None:
    """Forward the bus in the calling thread until `context` is terminated.

    Parameters
    ----------
    frontend : str
        Endpoint the XSUB socket binds; publishers connect here.
    backend : str
        Endpoint the XPUB socket binds; subscribers connect here.
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``. ``context.term()`` from another thread
        ends the proxy (use :class:`ProxyThread` for a stoppable embedded proxy).
    hwm : int, optional
        Send and receive high-water marks of both sockets, in messages.
    curve : CurveConfig, optional
        Both sockets are CURVE servers (publishers and subscribers its clients).
    sndbuf : int, optional
        Kernel send buffer (``SO_SNDBUF``) of each subscriber's connection, bytes; 0
        keeps the OS default (autotuned, up to ``net.ipv4.tcp_wmem``, megabytes).
        With the high-water mark it bounds what waits for a slow subscriber.
    """
    context = context or zmq.Context.instance()
    xsub, xpub = _bind_pair(context, frontend, backend, hwm, curve, sndbuf)
    logger.info("proxy: publishers -> %s, subscribers -> %s", _endpoint(xsub), _endpoint(xpub))
    try:
        zmq.proxy(xsub, xpub)
    except zmq.ContextTerminated:
        pass
    finally:
        xsub.close(linger=0)
        xpub.close(linger=0)


class ProxyThread:
    """A proxy in a background thread, stoppable cleanly (tests, embedded use).

    Parameters
    ----------
    frontend : str, optional
        Endpoint for publishers (XSUB); default a free port on 127.0.0.1.
    backend : str, optional
        Endpoint for subscribers (XPUB); default a free port on 127.0.0.1.
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    hwm : int, optional
        High-water marks of the proxy sockets, in messages.
    curve : CurveConfig, optional
        Both sockets are CURVE servers; default plain TCP (loopback).
    sndbuf : int, optional
        Kernel send buffer per subscriber connection, bytes (0: OS default).

    Examples
    --------
    >>> with ProxyThread() as proxy:  # doctest: +SKIP
    ...     publisher = BusPublisher(proxy.frontend_address)
    ...     receiver = BusReceiver(proxy.backend_address)
    """

    def __init__(
        self,
        frontend: str = "tcp://127.0.0.1:*",
        backend: str = "tcp://127.0.0.1:*",
        *,
        context: zmq.Context | None = None,
        hwm: int = DEFAULT_HWM,
        curve: CurveConfig | None = None,
        sndbuf: int = 0,
    ) -> None:
        self._curve = curve
        self._sndbuf = sndbuf
        self._frontend = frontend
        self._backend = backend
        self._context = context or zmq.Context.instance()
        self._hwm = hwm
        self._control = f"inproc://speckleflow-proxy-control-{id(self):x}-{next(_ids)}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._addresses: tuple[str, str] | None = None
        self._thread: threading.Thread | None = None

    @property
    def frontend_address(self) -> str:
        """Resolved endpoint publishers connect to."""
        return self._resolved()[0]

    @property
    def backend_address(self) -> str:
        """Resolved endpoint subscribers connect to."""
        return self._resolved()[1]

    def _resolved(self) -> tuple[str, str]:
        if self._addresses is None:
            raise RuntimeError("ProxyThread is not running; call start() first")
        return self._addresses

    def start(self, timeout_s: float = 10.0) -> Self:
        """Bind and start forwarding; returns once the sockets are bound.

        Raises
        ------
        RuntimeError
            If already started, or the proxy did not come up within `timeout_s`.
        zmq.ZMQError
            If binding failed (e.g. address in use).
        """
        if self._thread is not None:
            raise RuntimeError("ProxyThread already started")
        self._thread = threading.Thread(target=self._run, name="speckleflow-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"proxy did not start within {timeout_s} s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def _run(self) -> None:
        # Signals are for the main thread (whose handlers stop the proxy), not for
        # interrupting the proxy's poll here.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        # REP, not PAIR: with libzmq 4.3.5 a TERMINATE sent over inproc PAIR by a socket
        # that closes right after is sometimes never seen (the proxy hangs); REQ/REP
        # with the reply awaited was reliable in 40/40 trials where PAIR was not.
        control = self._context.socket(zmq.REP)
        control.setsockopt(zmq.LINGER, 0)
        sockets: tuple[zmq.Socket, ...] = (control,)
        try:
            control.bind(self._control)
            xsub, xpub = _bind_pair(
                self._context, self._frontend, self._backend, self._hwm, self._curve, self._sndbuf
            )
            sockets = (control, xsub, xpub)
            self._addresses = (_endpoint(xsub), _endpoint(xpub))
        except Exception as exc:  # noqa: BLE001 — re-raised by start() in the caller
            self._error = exc
            self._ready.set()
            for socket in sockets:
                socket.close(linger=0)
            return
        self._ready.set()
        try:
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for socket in sockets:
                socket.close(linger=0)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the proxy and join its thread (idempotent).

        Raises
        ------
        RuntimeError
            If the thread did not end within `timeout_s`.
        """
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            control = self._context.socket(zmq.REQ)
            control.setsockopt(zmq.LINGER, 0)
            try:
                control.connect(self._control)
                control.send(b"TERMINATE")
                if control.poll(int(timeout_s * 1000), zmq.POLLIN):
                    control.recv()
            finally:
                control.close(linger=0)
            thread.join(timeout_s)
            if thread.is_alive():
                raise RuntimeError(f"proxy thread did not stop within {timeout_s} s")
        self._thread = None
        self._addresses = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a proxy until SIGTERM or SIGINT.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``): ``--frontend``, ``--backend``,
        ``--hwm``, ``--sndbuf``. CURVE encryption from the environment
        (:meth:`CurveConfig.from_env <speckleflow.streaming.curve.CurveConfig.from_env>`).

    Returns
    -------
    int
        Exit status (0 on a clean stop).
    """
    parser = argparse.ArgumentParser(
        prog="python -m speckleflow.streaming.proxy",
        description="Forward the speckleflow live data bus (XSUB frontend -> XPUB backend).",
    )
    parser.add_argument("--frontend", default=DEFAULT_FRONTEND, help="endpoint for publishers")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, help="endpoint for subscribers")
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="high-water mark (messages)")
    parser.add_argument("--sndbuf", type=int, default=0,
                        help="kernel send buffer per subscriber connection (bytes; 0: OS default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("proxy: received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous: dict[int, Any] = {
        signum: signal.signal(signum, _on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        curve = CurveConfig.from_env()
    except ValueError as exc:
        print(f"speckleflow proxy: CURVE configuration: {exc}", file=sys.stderr)
        return 2
    proxy = ProxyThread(args.frontend, args.backend, hwm=args.hwm, curve=curve, sndbuf=args.sndbuf)
    try:
        try:
            proxy.start()
        except zmq.ZMQError as exc:
            print(f"speckleflow proxy: cannot bind: {exc}", file=sys.stderr)
            return 2
        print(
            f"speckleflow proxy: publishers -> {proxy.frontend_address}, "
            f"subscribers -> {proxy.backend_address}",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        proxy.stop()
        stop_authenticators()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
