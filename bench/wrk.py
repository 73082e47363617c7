"""HTTP load from ``wrk`` (a C load generator), so that a Python client sharing the cores
with the service does not cap the requests/s it measures.

``run_wrk`` runs it and parses its summary; ``None`` when wrk is not installed (the caller
falls back on its own client and says so). Debian/Ubuntu: ``apt-get install wrk``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# wrk's summary lines: "Requests/sec:   1234.56", "  Non-2xx or 3xx responses: 12",
# "  12345 requests in 4.00s, 2.50MB read", "  Socket errors: connect 0, read 1, ...".
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(m?s|m)\b", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0}

WRK_MISSING = "wrk not found on PATH (apt-get install wrk)"


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    requests: int
    seconds: float
    non_2xx: int  # answers that were not 2xx/3xx
    socket_errors: int
    connections: int


def parse_wrk(output: str, connections: int) -> WrkResult:
    """wrk's summary as numbers; ``ValueError`` when ``output`` is not one."""
    rate, total = _RATE.search(output), _TOTAL.search(output)
    if rate is None or total is None:
        raise ValueError(f"not a wrk summary:\n{output[-2000:]}")
    non_2xx = _NON_2XX.search(output)
    errors = _SOCKET_ERRORS.search(output)
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _UNIT_SECONDS[total.group(3)],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        connections=connections,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, seconds: float, connections: int = 8, threads: int = 2,
            lua: str | None = None) -> WrkResult | None:
    """``wrk`` against ``url`` for ``seconds``; ``lua``: a wrk script (e.g. a POST body).
    ``None`` when wrk is not installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    duration = f"{max(1, round(seconds))}s"
    with tempfile.TemporaryDirectory(prefix="latentd-wrk-") as folder:
        argv = [wrk, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}"]
        if lua is not None:
            script = Path(folder) / "request.lua"
            script.write_text(lua)
            argv += ["-s", str(script)]
        done = subprocess.run([*argv, url], capture_output=True, text=True, check=False,
                              timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_wrk(done.stdout, connections)


def post_json_script(body: str, headers: dict[str, str] | None = None) -> str:
    """A wrk script that sends every request as ``POST`` with the JSON ``body``."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body)}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}"
              for k, v in (headers or {}).items()]
    return "\n".join(lines) + "\n"


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
