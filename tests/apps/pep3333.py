"""A plain WSGI app exercising PEP 3333, wrapped in wsgiref.validate (routes under /raw/ are not,
because they deliberately break the rules the validator enforces)."""
import atexit
import json
import os
import sys
import tempfile
import time
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)
STATE = os.environ.get("PEP3333_STATE") or tempfile.mkdtemp()


def record(name):
    with open(os.path.join(STATE, name), "a") as f:
        f.write("x")


# A worker that exits normally (drained, recycled) runs the app's exit handlers.
atexit.register(lambda: record(f"atexit-{os.getpid()}"))


class Closing:
    """An iterable that records close() calls."""

    def __init__(self, chunks, name, delay=0.0):
        self.chunks, self.name, self.delay = chunks, name, delay

    def __iter__(self):
        for c in self.chunks:
            if self.delay:
                time.sleep(self.delay)
            yield c

    def close(self):
        record(self.name)


def jsonable(environ):
    out = {}
    for k, v in environ.items():
        if isinstance(v, (str, bool, int)):
            out[k] = v
        elif k == "wsgi.version":
            out[k] = list(v)
    out["types"] = {k: type(v).__name__ for k, v in environ.items() if isinstance(v, (str, bool))}
    return out


def checked(environ, start_response):
    path = environ["PATH_INFO"]
    qs = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    if path == "/environ":
        # Native strings: PATH_INFO re-encoded as latin-1 gives the raw request bytes back.
        body = jsonable(environ)
        body["path_bytes"] = list(path.encode("latin-1"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
    if path == "/echo":
        inp = environ["wsgi.input"]
        mode = qs.get("mode", "read")
        if mode == "read":
            n = int(environ.get("CONTENT_LENGTH") or 0)
            data = inp.read(n) if n else b"".join(iter(lambda: inp.read(7), b""))
            parts = [data]
        elif mode == "small":
            parts = list(iter(lambda: inp.read(3), b""))
        elif mode == "readline":
            parts = list(iter(inp.readline, b""))
        elif mode == "readline_limit":
            parts = list(iter(lambda: inp.readline(4), b""))
        elif mode == "readlines":
            parts = inp.readlines()
        elif mode == "readlines_hint":
            parts = [inp.readlines(5), inp.readlines()]
            parts = [b"|".join(p) for p in parts]
        elif mode == "iter":
            parts = [line for line in inp]
        body = json.dumps([p.decode("latin-1") for p in parts]).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-")
        write(b"twice-")
        return [b"then-iterated"]
    if path == "/exc_info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("caught before any body")
        except RuntimeError:
            start_response("503 Replaced", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced by the error page"]
    if path == "/gen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"", b"one,", b"", b"two,", b"three"], "gen")
    if path == "/empty_then_data":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"", b"", b"late"])
    if path in ("/file", "/raw/file"):
        name = os.path.join(STATE, "data.bin")
        if not os.path.exists(name):
            with open(name + ".tmp", "wb") as out:
                out.write(bytes(range(256)) * 1200)
            os.replace(name + ".tmp", name)
        f = open(name, "rb")
        f.seek(int(qs.get("skip", "0")))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 4096)
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"a", b"b"], "close-" + qs["id"])
    if path == "/closed":
        name = os.path.join(STATE, qs["name"])
        n = len(open(name).read()) if os.path.exists(name) else 0
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(n).encode()]
    if path == "/slow_stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"x" * 1024] * 200, "abort-" + qs["id"], delay=0.05)
    if path == "/head":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path == "/204":
        start_response("204 No Content", [])
        return []
    if path == "/304":
        start_response("304 Not Modified", [("ETag", '"v1"')])
        return []
    if path == "/errors":
        environ["wsgi.errors"].write("message to wsgi.errors\n")
        environ["wsgi.errors"].writelines(["second line", " continued\n"])
        environ["wsgi.errors"].flush()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"logged"]
    if path == "/custom_headers":
        start_response("299 Custom Reason", [("Content-Type", "text/plain"), ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                                              ("Server", "mine"), ("X-Multi", "1"), ("X-Multi", "2"), ("X-Latin", "caf\xe9")])
        return [b"ok"]
    if path == "/executable":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [sys.executable.encode()]
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/sleep":
        time.sleep(float(qs.get("s", "1")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"slept {os.getpid()}".encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no route " + path.encode("latin-1")]


def raw(environ, start_response):
    path = environ["PATH_INFO"][4:]
    inp = environ["wsgi.input"]
    if path == "/read_all":
        data = inp.read()
        more = inp.read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d:%d:" % (len(data), len(more)), data[:32]]
    if path == "/raise":
        raise RuntimeError("boom before start_response")
    if path == "/raise_after":
        def gen():
            yield b"first chunk"
            raise RuntimeError("boom after the headers")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/exc_after":
        def gen():
            yield b"first chunk"
            try:
                raise ValueError("late")
            except ValueError:
                start_response("500 Late", [], sys.exc_info())
            yield b"never"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/bad_header":
        start_response("200 OK", [("X-Bad", "line\r\nInjected: yes")])
        return [b"must not be sent"]
    if path == "/bad_name":
        start_response("200 OK", [("Bad Name", "v")])
        return [b"must not be sent"]
    if path == "/bad_status":
        start_response("OK", [])
        return [b"must not be sent"]
    if path == "/not_bytes":
        start_response("200 OK", [])
        return ["a str, not bytes"]
    if path == "/cl_short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"12345"]
    if path == "/cl_short_list":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"123", b"45"]
    if path == "/cl_short_gen":
        # Streamed (a pause between chunks), and still short.
        start_response("200 OK", [("Content-Length", "10")])
        return Closing([b"123", b"45"], "cl_short_gen", delay=0.2)
    if path == "/cl_long":
        start_response("200 OK", [("Content-Length", "3")])
        return [b"1234567890"]
    if path == "/cl_long_gen":
        start_response("200 OK", [("Content-Length", "3")])
        return iter([b"12", b"345", b"678"])
    if path == "/cl_first_gen":
        # The first chunk alone reaches the Content-Length: the rest is never sent.
        start_response("200 OK", [("Content-Length", "5")])
        return Closing([b"1234567", b"89"], "cl_first_gen")
    if path == "/hop":
        start_response("200 OK", [("Keep-Alive", "timeout=99"), ("Connection", "close"), ("Content-Type", "text/plain")])
        return [b"hop"]
    if path == "/no_start":
        return [b"never started"]
    if path == "/twice":
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b"x"]
    start_response("404 Not Found", [])
    return [b""]


_checked = validator(checked)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/raw/file":
        # Unwrapped, so the server sees its own file_wrapper and serves the file itself.
        return checked(environ, start_response)
    if environ["PATH_INFO"].startswith("/raw/"):
        return raw(environ, start_response)
    return _checked(environ, start_response)


def create_app(flavour="plain", **kw):
    """Factory form: `pep3333:create_app("named", extra=1)`."""
    def factory_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"factory {flavour} {sorted(kw.items())}".encode()]
    return factory_app


not_callable = 42
