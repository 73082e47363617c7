"""The connection of one webhook attempt: pinned to the vetted addresses, under one deadline.

The URL was vetted against one DNS answer; letting httpx resolve the name again to
connect would ask DNS a second time, and a rebinding name answers a public address to
the check and 127.0.0.1 to the connect. So the connection goes to the addresses that
were checked, and to nothing else: httpx builds the request from the URL as before
(Host header, TLS SNI and certificate verification all for the URL's host name) and
only the TCP connect underneath is replaced, by a network backend that ignores the
name. Sending to the IP with a Host header and an ``sni_hostname`` extension would do
the same for one request, but httpcore's pool keys connections by the IP, so a TLS
connection verified for one name could carry another name's request.

httpx's timeout is per operation (connect, each read, each write), so a receiver that
trickles its status line a byte at a time never trips it and holds a worker thread for
as long as it likes. Every socket operation here gets the time left until the
attempt's deadline instead (or less), so the attempt as a whole (connect, TLS, send,
status line and headers) ends by the deadline however the receiver paces its bytes.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from shared.webhooks import WebhookTarget


def _time_left(deadline: float, timeout: float | None) -> float:
    """Seconds the next socket operation may take; raises TimeoutError once none are left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("attempt deadline passed")
    return left if timeout is None else min(timeout, left)


@contextmanager
def _mapped(on_timeout: type[Exception], on_error: type[Exception]) -> Iterator[None]:
    # httpcore's own mapping (which httpx maps on to httpx.ReadTimeout and the like).
    try:
        yield
    except TimeoutError as exc:  # socket.timeout, and the deadline passing between calls
        raise on_timeout(str(exc) or "timed out") from exc
    except OSError as exc:
        raise on_error(str(exc)) from exc


class DeadlineStream(httpcore.NetworkStream):
    """A socket whose every operation ends by ``deadline`` (time.monotonic seconds)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            self._sock.settimeout(_time_left(self._deadline, timeout))
            return self._sock.recv(max_bytes)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _mapped(httpcore.WriteTimeout, httpcore.WriteError):
            view = memoryview(buffer)
            while view:
                # Re-armed for each send: a receiver that reads slowly is held to the
                # deadline too.
                self._sock.settimeout(_time_left(self._deadline, timeout))
                view = view[self._sock.send(view):]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # server_hostname is the URL's host: SNI and certificate verification are for the
        # name, not for the pinned address. The handshake is bounded as a whole by the
        # socket timeout (the ssl module keeps its own deadline across the handshake).
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            try:
                self._sock.settimeout(_time_left(self._deadline, timeout))
                tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
            except BaseException:
                self._sock.close()
                raise
        return DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock  # httpcore asks it for selected_alpn_protocol()
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":  # an idle pooled connection the server closed
            return bool(select.select([self._sock], [], [], 0)[0])
        return None


class PinnedBackend(httpcore.NetworkBackend):
    """Connects to the vetted addresses whatever host httpcore asks for, by the deadline."""

    def __init__(self, target: WebhookTarget, deadline: float) -> None:
        self._target = target
        self._deadline = deadline

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        # ``host`` is the URL's name; resolving it here is exactly what must not happen.
        # The transport serves one request, to the URL the target was vetted for.
        failures: list[str] = []
        addresses = self._target.addresses
        for index, address in enumerate(addresses):
            left = self._deadline - time.monotonic()
            if left <= 0:
                break
            # Each address left gets an equal share of the time left, so one that drops
            # packets (an unreachable IPv6 route, say) leaves time for the next.
            share = left / (len(addresses) - index)
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(share if timeout is None else min(share, timeout))
                if local_address is not None:
                    sock.bind((local_address, 0))
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A numeric address: the socket module parses it and looks nothing up.
                sock.connect((address, port))
            except OSError as exc:
                sock.close()
                failures.append(f"{address} port {port}: {exc or type(exc).__name__}")
                continue
            return DeadlineStream(sock, self._deadline)
        detail = "; ".join(failures) or "no time left to connect"
        if time.monotonic() >= self._deadline:
            raise httpcore.ConnectTimeout(detail)
        raise httpcore.ConnectError(detail)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are not delivered over unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport for one request, connecting through a ``PinnedBackend``."""

    def __init__(self, backend: PinnedBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx (pinned at 0.28) takes no network backend, so its pool is rebuilt with
        # ours. Were httpx to rename the attribute, the assignment would leave its own
        # pool (and its own DNS lookup) in use: refuse to run instead.
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise TypeError("httpx.HTTPTransport has no httpcore pool to pin: httpx has changed")
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, network_backend=backend,
            # One request per transport; nothing to keep alive, nothing to share.
            max_connections=1, max_keepalive_connections=0,
        )
