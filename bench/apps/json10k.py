"""A 10 KiB JSON document serialized on every request."""

import json

ITEMS = [{"id": i, "name": f"item-{i:04d}", "price": i * 1.25, "tags": ["a", "b", "c"]} for i in range(138)]


def app(environ, start_response):
    body = json.dumps({"items": ITEMS}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
