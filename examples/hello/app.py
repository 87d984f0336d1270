"""A small Flask app for `kubewsgi run`: one page, one JSON endpoint, static files next to it.

    kubewsgi run app:app --chdir examples/hello --static /static=examples/hello/static
"""

from flask import Flask, jsonify, request

app = Flask(__name__, static_folder=None)


@app.get("/")
def index():
    return (
        "<!doctype html><title>hello</title>"
        '<link rel="stylesheet" href="/static/css/site.css">'
        "<h1>Hello from kubewsgi</h1>"
        '<p>Try <a href="/api/hello?name=you">/api/hello</a>.</p>'
    )


@app.get("/api/hello")
def hello():
    return jsonify(
        message=f"hello, {request.args.get('name', 'world')}",
        client=request.remote_addr,
        scheme=request.scheme,
        host=request.host,
    )


@app.post("/api/echo")
def echo():
    data = request.get_data()
    return jsonify(length=len(data), content_type=request.content_type)
