"""Plain WSGI probe app for the proxy and `kubewsgi run` tests."""

import json
import os
import threading
import time

_lock = threading.Lock()
_active = 0
_max_active = 0


def app(environ, start_response):
    global _active, _max_active
    path = environ.get("PATH_INFO", "/")
    query = dict(kv.split("=", 1) for kv in environ.get("QUERY_STRING", "").split("&") if "=" in kv)
    with _lock:
        _active += 1
        _max_active = max(_max_active, _active)
    try:
        if "sleep" in query:
            time.sleep(float(query["sleep"]))
        if path == "/big":
            n = int(query.get("n", "1000000"))
            body = bytes(i % 251 for i in range(n))
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
            return [body]
        length = environ.get("CONTENT_LENGTH") or "0"
        data = environ["wsgi.input"].read(int(length)) if length != "0" else b""
        info = {
            "path": path,
            "method": environ["REQUEST_METHOD"],
            "remote_addr": environ.get("REMOTE_ADDR"),
            "scheme": environ["wsgi.url_scheme"],
            "host": environ.get("HTTP_HOST"),
            "content_length": environ.get("CONTENT_LENGTH"),
            "body_len": len(data),
            "body_sum": sum(data) % 1000003,
            "pid": os.getpid(),
            "max_active": _max_active,
            "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
        }
        body = json.dumps(info).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    finally:
        with _lock:
            _active -= 1
