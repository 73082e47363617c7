"""bench/wrk.py drives the real wrk against a real HTTP server and reads its summary."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator

import pytest

from bench.wrk import post_json_script, run_wrk


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects

    def _answer(self, status: int) -> None:
        body = b"{}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/ok" else 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        posted = self.rfile.read(length)
        ok = posted == b'{"prompt": "x"}' and self.headers["X-Test"] == "yes"
        self._answer(201 if ok else 400)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None,
                               reason="wrk is a test tool: scripts/install.sh --test-tools")


@needs_wrk
def test_counts_requests_and_answers_that_are_not_2xx(server: str) -> None:
    ok = run_wrk(server + "/ok", 1, connections=2)
    assert ok is not None and ok.requests > 0 and ok.non_2xx == 0
    assert ok.requests_per_second > 0 and 0.5 < ok.seconds < 3 and ok.connections == 2
    missing = run_wrk(server + "/missing", 1, connections=2)
    assert missing is not None and missing.requests > 0 and missing.non_2xx == missing.requests


@needs_wrk
def test_posts_the_scripted_body_and_headers(server: str) -> None:
    posted = run_wrk(server + "/jobs", 1, connections=2,
                     lua=post_json_script('{"prompt": "x"}', {"X-Test": "yes"}))
    assert posted is not None and posted.requests > 0 and posted.non_2xx == 0


def test_without_wrk_on_the_path_there_is_no_result(server: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert run_wrk(server + "/ok", 1) is None
