"""Loads the same WSGI apps behind kubewsgi and its peers in one run and writes a Markdown report.

Run through bench/run, which installs the peers first. Every server binds loopback only, runs in
its own process group and is stopped (SIGTERM, then SIGKILL) before this script exits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.procs import Server, free_port, stop_all  # noqa: E402
from lib.report import write_report  # noqa: E402
from lib.wrk import RssSampler, run_wrk  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS_DIR = BENCH / "apps"
VENV = BENCH / ".venv"


@dataclass(frozen=True)
class App:
    key: str
    title: str
    module: str
    path: str
    check: bytes  # a fragment the response body must contain
    post_bytes: int = 0
    static: bool = False


APPS = [
    App("hello", "Hello world (GET /)", "hello", "/", b"Hello, World!"),
    App("json10k", "10 KiB JSON serialized per request", "json10k", "/", b'"item-0137"'),
    App("echo1m", "1 MiB POST echoed back", "echo", "/", b"", post_bytes=1 << 20),
    App("flask", "Flask view (route parameter, jsonify)", "flaskapp", "/user/42?v=1", b'"user-42"'),
    App("django", "Django view rendering a template", "djangoapp", "/catalog", b"PRODUCT 19"),
    App("sleep10ms", "I/O-bound view: sleep(10 ms)", "sleep10ms", "/", b"slept 10 ms"),
    App("static64k", "Static 64 KiB file", "hello", "/static/file64k.bin", b"", static=True),
]


@dataclass
class Config:
    workers: int
    threads: int
    kubewsgi: Path
    tmp: Path
    static_dir: Path


@dataclass
class System:
    key: str
    label: str
    threaded: bool  # whether --threads applies
    static_only: bool = False
    serves_static: bool = False

    def describe(self, cfg: Config) -> str:
        t = f"{cfg.threads} threads" if self.threaded else "1 thread"
        return f"{self.label} ({cfg.workers} × {t})" if not self.static_only else self.label

    def start(self, app: App, cfg: Config) -> tuple[list[Server], int]:
        port = free_port()
        return STARTERS[self.key](app, cfg, port), port


def _py(tool: str) -> str:
    return str(VENV / "bin" / tool)


def start_kubewsgi(app: App, cfg: Config, port: int) -> list[Server]:
    cmd = [
        str(cfg.kubewsgi), "run", f"{app.module}:app",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(cfg.workers), "--threads", str(cfg.threads),
        "--chdir", str(APPS_DIR), "--venv", str(VENV),
        "--access-log", "off",
    ]
    if app.static:
        cmd += ["--static", f"/static={cfg.static_dir}"]
    return [Server.spawn("kubewsgi", cmd, cfg.tmp)]


def start_kubewsgi_worker(app: App, cfg: Config, port: int) -> list[Server]:
    cmd = [
        str(cfg.kubewsgi), "worker", f"{app.module}:app",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(cfg.workers), "--threads", str(cfg.threads),
        "--chdir", str(APPS_DIR), "--venv", str(VENV),
        "--control-socket", str(cfg.tmp / f"control-{port}.sock"),
    ]
    return [Server.spawn("kubewsgi-worker", cmd, cfg.tmp)]


def _gunicorn(app: App, cfg: Config, bind: str, threaded: bool) -> list[str]:
    cmd = [
        _py("gunicorn"), "--workers", str(cfg.workers), "--bind", bind,
        "--chdir", str(APPS_DIR), "--log-level", "warning",
    ]
    if threaded:
        cmd += ["--worker-class", "gthread", "--threads", str(cfg.threads)]
    return cmd + [f"{app.module}:app"]


def start_gunicorn(app: App, cfg: Config, port: int) -> list[Server]:
    return [Server.spawn("gunicorn", _gunicorn(app, cfg, f"127.0.0.1:{port}", False), cfg.tmp)]


def _nginx(cfg: Config, port: int, upstream_sock: Path | None) -> Server:
    """nginx as in gunicorn's deployment docs: upstream on a Unix socket, static by alias."""
    d = cfg.tmp / f"nginx-{port}"
    d.mkdir()
    upstream = (
        f"upstream app_server {{ server unix:{upstream_sock} fail_timeout=0; }}" if upstream_sock else ""
    )
    root = (
        """location / {
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Host $http_host;
        proxy_redirect off;
        proxy_pass http://app_server;
      }"""
        if upstream_sock
        else "location / { return 404; }"
    )
    conf = d / "nginx.conf"
    conf.write_text(
        f"""
worker_processes auto;
user root;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 5;
  client_max_body_size 10m;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  types {{ application/octet-stream bin; }}
  {upstream}
  server {{
    listen 127.0.0.1:{port};
    location /static/ {{ alias {cfg.static_dir}/; }}
    {root}
  }}
}}
"""
    )
    return Server.spawn("nginx", ["nginx", "-c", str(conf), "-p", str(d), "-e", str(d / "error.log")], cfg.tmp)


def _nginx_gunicorn(app: App, cfg: Config, port: int, threaded: bool) -> list[Server]:
    sock = cfg.tmp / f"gunicorn-{port}.sock"
    g = Server.spawn("gunicorn", _gunicorn(app, cfg, f"unix:{sock}", threaded), cfg.tmp)
    return [g, _nginx(cfg, port, sock)]


def start_nginx_gunicorn(app: App, cfg: Config, port: int) -> list[Server]:
    return _nginx_gunicorn(app, cfg, port, False)


def start_nginx_gunicorn_gthread(app: App, cfg: Config, port: int) -> list[Server]:
    return _nginx_gunicorn(app, cfg, port, True)


def start_granian(app: App, cfg: Config, port: int) -> list[Server]:
    cmd = [
        _py("granian"), "--interface", "wsgi", "--workers", str(cfg.workers),
        "--blocking-threads", str(cfg.threads), "--host", "127.0.0.1", "--port", str(port),
        "--working-dir", str(APPS_DIR), "--no-access-log", "--log-level", "warning",
        f"{app.module}:app",
    ]
    return [Server.spawn("granian", cmd, cfg.tmp)]


def start_nginx_static(app: App, cfg: Config, port: int) -> list[Server]:
    return [_nginx(cfg, port, None)]


STARTERS = {
    "kubewsgi": start_kubewsgi,
    "kubewsgi-worker": start_kubewsgi_worker,
    "nginx+gunicorn": start_nginx_gunicorn,
    "nginx+gunicorn-gthread": start_nginx_gunicorn_gthread,
    "gunicorn": start_gunicorn,
    "granian": start_granian,
    "nginx": start_nginx_static,
}

SYSTEMS = [
    System("kubewsgi", "kubewsgi run (proxy + worker over a Unix socket)", True, serves_static=True),
    System("kubewsgi-worker", "kubewsgi worker alone", True),
    System("nginx+gunicorn", "nginx → gunicorn sync (Unix socket)", False),
    System("nginx+gunicorn-gthread", "nginx → gunicorn gthread (Unix socket)", True),
    System("gunicorn", "gunicorn sync alone", False),
    System("granian", "granian --interface wsgi", True),
    System("nginx", "nginx static files", False, static_only=True, serves_static=True),
]


def applies(system: System, app: App) -> bool:
    return system.serves_static if app.static else not system.static_only


def fetch(url: str, body: bytes | None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def wait_ready(servers: list[Server], url: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < end:
        for s in servers:
            if s.proc.poll() is not None:
                raise RuntimeError(f"{s.name} exited with {s.proc.returncode}:\n{s.log_tail()}")
        try:
            status, _ = fetch(url, None, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except Exception as e:  # not up yet
            last = str(e)
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {deadline_s:.0f}s ({last}):\n" + "\n".join(s.log_tail() for s in servers))


def verify(app: App, url: str, static_file: Path) -> None:
    """A benchmark of error pages measures nothing: check one real answer first."""
    if app.post_bytes:
        payload = os.urandom(app.post_bytes)
        status, body = fetch(url, payload, timeout=30)
        ok = status == 200 and body == payload
    elif app.static:
        status, body = fetch(url, None)
        ok = status == 200 and body == static_file.read_bytes()
    else:
        status, body = fetch(url, None)
        ok = status == 200 and app.check in body
    if not ok:
        raise RuntimeError(f"wrong answer from {url}: HTTP {status}, {body[:200]!r}")


@dataclass
class Result:
    app: str
    system: str
    label: str
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0
    non2xx: int = 0
    peak_rss: int = 0
    failed: str = ""


def bench_app(app: App, systems: list[System], cfg: Config, args, results: list[Result], static_file: Path) -> None:
    chosen = [s for s in systems if applies(s, app)]
    running: dict[str, tuple[list[Server], str]] = {}
    by_key: dict[str, Result] = {}
    try:
        for s in chosen:
            r = Result(app.key, s.key, s.describe(cfg))
            by_key[s.key] = r
            results.append(r)
            try:
                servers, port = s.start(app, cfg)
                url = f"http://127.0.0.1:{port}{app.path}"
                running[s.key] = (servers, url)
                ready_url = url if not app.post_bytes else f"http://127.0.0.1:{port}/"
                wait_ready(servers, ready_url, args.start_timeout)
                verify(app, url, static_file)
            except Exception as e:
                r.failed = str(e).splitlines()[0][:300]
                print(f"  {s.key}: FAILED: {e}", file=sys.stderr)
                if s.key in running:
                    stop_all(running.pop(s.key)[0])
        live = [s for s in chosen if s.key in running]
        post = app.post_bytes
        for s in live:
            try:
                run_wrk(running[s.key][1], args.warmup, args.connections, post)
            except RuntimeError as e:
                by_key[s.key].failed = f"warm-up: {e}".splitlines()[0][:300]
        live = [s for s in live if not by_key[s.key].failed]
        for rep in range(args.reps):
            k = rep % max(1, len(live))
            for s in live[k:] + live[:k]:
                servers, url = running[s.key]
                r = by_key[s.key]
                if r.failed:
                    continue
                sampler = RssSampler([sv.proc.pid for sv in servers])
                try:
                    with sampler:
                        w = run_wrk(url, args.duration, args.connections, post)
                except RuntimeError as e:
                    exited = [f"{sv.name} exited with {sv.proc.poll()}" for sv in servers if sv.proc.poll() is not None]
                    r.failed = "; ".join([str(e).splitlines()[0][:200], *exited])
                    logs = "\n".join(sv.log_tail(40) for sv in servers)
                    print(f"  {s.key}: FAILED: {r.failed}\n{logs}", file=sys.stderr)
                    continue
                r.rps.append(w.rps)
                r.p50_ms.append(w.p50_ms)
                r.p99_ms.append(w.p99_ms)
                r.errors += w.socket_errors
                r.non2xx += w.non2xx
                r.peak_rss = max(r.peak_rss, sampler.peak)
                print(f"  {app.key:10} {s.key:24} rep {rep + 1}: {w.rps:10.0f} req/s  p50 {w.p50_ms:7.2f} ms  "
                      f"p99 {w.p99_ms:7.2f} ms  rss {sampler.peak / 2**20:6.1f} MiB", file=sys.stderr)
    finally:
        for servers, _ in running.values():
            stop_all(servers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="one short round of one app per system (seconds)")
    ap.add_argument("--apps", default="", help="comma-separated app keys (default: all)")
    ap.add_argument("--systems", default="", help="comma-separated system keys (default: all)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    ap.add_argument("--reps", type=int, default=3, help="measured runs per system and app")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load per system first")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4, help="threads per worker where the server has them")
    ap.add_argument("--start-timeout", type=float, default=90.0)
    ap.add_argument("--kubewsgi", default=str(ROOT / "target" / "release" / "kubewsgi"))
    ap.add_argument("--build", default="release", help="build profile, for the report")
    ap.add_argument("--out", default=str(BENCH / "results"))
    args = ap.parse_args()

    if args.smoke:
        args.duration, args.reps, args.warmup = 1.0, 1, 0.5
        args.apps = args.apps or "hello"
    apps = [a for a in APPS if not args.apps or a.key in args.apps.split(",")]
    systems = [s for s in SYSTEMS if not args.systems or s.key in args.systems.split(",")]
    unknown = set(filter(None, args.apps.split(","))) - {a.key for a in APPS}
    unknown |= set(filter(None, args.systems.split(","))) - {s.key for s in SYSTEMS}
    if unknown:
        ap.error(f"unknown app or system: {', '.join(sorted(unknown))}")
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            ap.error(f"{tool} is not installed (bench/run installs it)")

    tmp = Path(tempfile.mkdtemp(prefix="kubewsgi-bench-"))
    os.chmod(tmp, 0o755)
    static_dir = tmp / "static"
    static_dir.mkdir()
    static_file = static_dir / "file64k.bin"
    static_file.write_bytes(os.urandom(64 * 1024))
    cfg = Config(args.workers, args.threads, Path(args.kubewsgi).resolve(), tmp, static_dir)

    # Stop the servers on Ctrl-C or SIGTERM as on a normal exit.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.timezone.utc)
    results: list[Result] = []
    try:
        for app in apps:
            print(f"{app.key}: {app.title}", file=sys.stderr)
            bench_app(app, systems, cfg, args, results, static_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "mode": "smoke" if args.smoke else "full",
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "build": args.build,
        "kubewsgi_binary": os.path.relpath(cfg.kubewsgi, ROOT) if cfg.kubewsgi.is_relative_to(ROOT) else str(cfg.kubewsgi),
        "versions": _versions(cfg),
        "workers": args.workers,
        "threads": args.threads,
        "duration": args.duration,
        "reps": args.reps,
        "warmup": args.warmup,
        "connections": args.connections,
    }
    paths = write_report(Path(args.out), meta, results, APPS, SYSTEMS)
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    failed = [r for r in results if r.failed]
    return 1 if failed or not results else 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*a: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _versions(cfg: Config) -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "?"

    return {
        "kubewsgi": out([str(cfg.kubewsgi), "--version"]),
        "gunicorn": out([_py("gunicorn"), "--version"]),
        "granian": out([_py("granian"), "--version"]),
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "--version"]),
        "python": out([_py("python"), "--version"]),
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
