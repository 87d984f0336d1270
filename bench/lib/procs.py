"""Servers under test: each in its own process group, logged to a file, always stopped."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

_LIVE: list["Server"] = []


class Server:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path):
        self.name, self.proc, self.log = name, proc, log

    @classmethod
    def spawn(cls, name: str, cmd: list[str], tmp: Path) -> "Server":
        log = tmp / f"{name}-{len(_LIVE)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=tmp,
            )
        server = cls(name, proc, log)
        _LIVE.append(server)
        return server

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"[{self.name}: no log]"
        return "\n".join(f"[{self.name}] {line}" for line in text)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the server's own process group, SIGKILL after `grace` seconds."""
        pgid = self.proc.pid  # start_new_session made it the group leader
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + wait
            while time.monotonic() < end and _group_alive(pgid):
                self.proc.poll()
                time.sleep(0.05)
            if not _group_alive(pgid):
                break
        self.proc.poll()
        if self in _LIVE:
            _LIVE.remove(self)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies of our own child count as gone.
    for pid in _pids():
        if _stat(pid).get("pgrp") == pgid and _stat(pid).get("state") != "Z":
            return True
    return False


def stop_all(servers: list[Server]) -> None:
    for s in reversed(servers):
        s.stop()


atexit.register(lambda: stop_all(list(_LIVE)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return {}
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return {"state": rest[0], "ppid": int(rest[1]), "pgrp": int(rest[2])}


_PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(roots: list[int]) -> int:
    """Resident memory of `roots` and all their descendants, summed."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st:
            children.setdefault(st["ppid"], []).append(pid)
    total, todo, seen = 0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(children.get(pid, []))
    return total
