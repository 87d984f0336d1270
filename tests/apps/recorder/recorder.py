"""WSGI app that appends every request it sees to `requests.log` beside itself, so a test can
prove a request never reached the app."""

import os
import threading
import time
import zlib

_LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requests.log")
_lock = threading.Lock()


def app(environ, start_response):
    length = environ.get("CONTENT_LENGTH") or "0"
    data = environ["wsgi.input"].read(int(length)) if length != "0" else b""
    line = "%s %s %s %d %08x %d\n" % (
        environ["REQUEST_METHOD"],
        environ.get("PATH_INFO", ""),
        environ.get("QUERY_STRING", "") or "-",
        len(data),
        zlib.crc32(data),
        os.getpid(),
    )
    with _lock:
        with open(_LOG, "a") as f:
            f.write(line)
    query = environ.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        time.sleep(float(query[len("sleep="):]))
    if query.startswith("big="):
        n = int(query[len("big="):])
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        return [b"x" * n]
    body = ("seen %s" % line).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
