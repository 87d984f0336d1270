"""An I/O-bound view: 10 ms waiting (as on a database) per request, GIL released meanwhile."""

import time


def app(environ, start_response):
    time.sleep(0.010)
    body = b"slept 10 ms"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
