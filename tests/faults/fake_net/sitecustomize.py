"""A scripted network for the service's own processes (tests/faults only): Python imports
this at start in every process whose PYTHONPATH holds this folder, and it does nothing
unless FAULTS_FAKE_NET names a script file.

The script, JSON, read again at every lookup and connect (the test writes it while the
service runs): ``{"names": {name: [[address, ...], ...]}, "public": {address: port},
"log": path}``. A scripted name gets its answers in turn, one per lookup in this
process, the last repeating (DNS rebinding: public first, private later). A connect to a
"public" address goes to 127.0.0.1:<port> instead, so a public host can be stood in for
without a byte leaving the machine. Every scripted lookup and connect is appended to the
log as one JSON line naming the process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import Any

SCRIPT_ENV = "FAULTS_FAKE_NET"


def _install(script_path: str) -> None:
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    lookups: dict[str, int] = {}
    lock = threading.Lock()

    def script() -> dict[str, Any]:
        try:
            with open(script_path) as file:
                return json.load(file)
        except (OSError, ValueError):
            return {}

    def log(plan: dict[str, Any], entry: dict[str, Any]) -> None:
        if "log" not in plan:
            return
        entry = {"pid": os.getpid(), "process": " ".join(sys.argv[1:4]), **entry}
        with lock, open(plan["log"], "a") as file:
            file.write(json.dumps(entry) + "\n")

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
        name = host.decode() if isinstance(host, bytes) else host
        plan = script()
        answers = plan.get("names", {}).get(name)
        if not answers:
            return real_getaddrinfo(host, port, *args, **kwargs)
        with lock:
            count = lookups.get(name, 0)
            lookups[name] = count + 1
        answer = answers[min(count, len(answers) - 1)]
        log(plan, {"event": "lookup", "host": name, "answer": answer})
        number = int(port or 0)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, number, 0, 0))
                if ":" in address else
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, number))
                for address in answer]

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and isinstance(address[0], str):
            plan = script()
            stand_in = plan.get("public", {}).get(address[0])
            if stand_in is not None:
                log(plan, {"event": "connect", "address": address[0], "port": address[1],
                           "stand_in_port": stand_in})
                return real_connect(self, ("127.0.0.1", stand_in))
        return real_connect(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign,assignment]


if os.environ.get(SCRIPT_ENV):
    _install(os.environ[SCRIPT_ENV])
