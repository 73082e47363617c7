"""A real local HTTP server that records webhook requests and answers scripted statuses."""

from __future__ import annotations

import secrets
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from celery import Celery

from shared.celery_app import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class WebhookReceiver:
    """Serves ``host`` (127.0.0.1) on a free port (or ``port``) from a thread; over TLS
    when given a server ``tls`` context, recording the SNI names clients send.

    Each path answers from its scripted list of statuses in order, repeating the
    last one when the list runs out; unscripted paths answer 200.

        with WebhookReceiver() as receiver:
            receiver.script("/hook", [500, 200])
            ...  # send to receiver.url("/hook")
            first, second = receiver.wait_for(2, timeout=10)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self._lock = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._scripts: dict[str, list[int]] = {}
        self._headers: dict[str, dict[str, str]] = {}
        self.server_names: list[str | None] = []  # SNI of each TLS handshake
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._scheme = "http"
        if tls is not None:
            tls.sni_callback = self._record_server_name
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
            self._scheme = "https"
        # A client that gives up on the handshake (a certificate it refuses) is expected.
        self._server.handle_error = lambda request, client_address: None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        """This receiver's URL, or the same port under another ``host`` name."""
        return f"{self._scheme}://{host or self._server.server_address[0]}:{self.port}{path}"

    def _record_server_name(self, sock: ssl.SSLObject, name: str | None,
                            context: ssl.SSLContext) -> None:
        with self._lock:
            self.server_names.append(name)

    def script(self, path: str, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        """Answer requests to ``path`` with these statuses in turn (and these extra headers)."""
        if not statuses:
            raise ValueError("script at least one status")
        with self._lock:
            self._scripts[path] = list(statuses)
            self._headers[path] = dict(headers or {})

    def requests(self, path: str | None = None) -> list[ReceivedRequest]:
        """Requests received so far, oldest first (only those to ``path`` if given)."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def wait_for(
        self, n: int, timeout: float = 10.0, path: str | None = None
    ) -> list[ReceivedRequest]:
        """Block until at least ``n`` requests arrived (to ``path`` if given); return them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self._requests if path is None or r.path == path]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected {n} webhook request(s) within {timeout}s, got {len(got)}"
                    )
                self._lock.wait(left)

    def _answer(self, request: ReceivedRequest) -> tuple[int, dict[str, str]]:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            script = self._scripts.get(request.path)
            if not script:
                return 200, {}
            status = script.pop(0) if len(script) > 1 else script[0]
            return status, self._headers[request.path]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = ReceivedRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                status, headers = receiver._answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

        return Handler


class TricklingReceiver:
    """A receiver that answers slowly on purpose: it reads each request, then sends its
    status line and headers one byte every ``interval`` seconds and never finishes them,
    until the client hangs up or the receiver stops. Serves 127.0.0.1 from threads.

    Every byte arrives well within any per-read timeout, so only a deadline on the
    whole attempt ends the request.
    """

    RESPONSE = b"HTTP/1.1 200 OK\r\nx-slow: " + b"z" * 1_000_000

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._stopping = threading.Event()
        self._lock = threading.Condition()
        self.connections = 0
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()  # ends every trickle: their connections close
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str = "/slow") -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def wait_for_connections(self, n: int, timeout: float = 10.0) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: self.connections >= n, timeout):
                raise TimeoutError(f"expected {n} connection(s), got {self.connections}")

    def _handler_class(self) -> type[socketserver.BaseRequestHandler]:
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                with receiver._lock:
                    receiver.connections += 1
                    receiver._lock.notify_all()
                received = b""
                while b"\r\n\r\n" not in received:  # the headers; the body is not needed
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                for byte in receiver.RESPONSE:
                    if receiver._stopping.wait(receiver.interval):
                        return
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:  # the client hung up
                        return

        return Handler


# A marker's countdown: later than any retry of the suites' schedules (base 0.2-0.3 s, so
# the waits before attempts 2 and 3 are at most 0.6 s and 1.2 s).
MARKER_COUNTDOWN_SECONDS = 1.5
MARKER_PREFIX = "evt_marker_"


def wait_past_any_retry(app: Celery, receiver: WebhookReceiver, job_id: str, path: str) -> None:
    """Have the webhook worker deliver a marker event to ``path`` later than any retry
    still due, and wait for it: once it has arrived, a retry that was coming has come."""
    marker = MARKER_PREFIX + secrets.token_hex(4)
    app.send_task(DELIVER_WEBHOOK_TASK, args=[job_id, marker, "completed", receiver.url(path),
                                              "{}"],
                  queue=WEBHOOK_QUEUE, countdown=MARKER_COUNTDOWN_SECONDS)
    deadline = time.monotonic() + 30
    while not any(r.headers.get("webhook-id") == marker for r in receiver.requests(path)):
        assert time.monotonic() < deadline, "the marker event never arrived"
        time.sleep(0.05)


def sent_before_marker(receiver: WebhookReceiver, path: str) -> list:
    """The requests to ``path`` other than markers."""
    return [r for r in receiver.requests(path)
            if not r.headers.get("webhook-id", "").startswith(MARKER_PREFIX)]
