"""The load client (wrk) and the memory sampler that runs beside it."""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .procs import tree_rss_bytes

_POST_SCRIPTS: dict[int, Path] = {}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non2xx: int
    raw: str


def _post_script(size: int) -> Path:
    if size not in _POST_SCRIPTS:
        f = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        f.write(
            'wrk.method = "POST"\n'
            f'wrk.body = string.rep("x", {size})\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
        f.close()
        _POST_SCRIPTS[size] = Path(f.name)
    return _POST_SCRIPTS[size]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"bad wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(out: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        socket_errors=sum(int(g) for g in errs.groups()) if errs else 0,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        raw=out,
    )


def run_wrk(url: str, duration: float, connections: int, post_bytes: int = 0) -> WrkResult:
    secs = max(1, math.ceil(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--latency", "--timeout", "10s"]
    if post_bytes:
        cmd += ["-s", str(_post_script(post_bytes))]
    p = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=secs + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr or p.stdout}")
    return parse(p.stdout)


class RssSampler:
    """Peak of the summed resident memory of a process tree, sampled every 200 ms."""

    def __init__(self, roots: list[int]):
        self.roots, self.peak = roots, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss_bytes(self.roots))
            if self._stop.wait(0.2):
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(self.roots))
