"""A Flask app (from PyPI, in the project venv), also in factory form."""
from flask import Flask, jsonify, request


def create_app(name="flask-default"):
    app = Flask(name)

    @app.get("/")
    def index():
        return f"hello from {app.name}"

    @app.post("/json")
    def echo_json():
        data = request.get_json()
        return jsonify(got=data, remote=request.remote_addr, scheme=request.scheme, host=request.host)

    @app.post("/upload")
    def upload():
        f = request.files["file"]
        return {"name": f.filename, "size": len(f.read()), "field": request.form["field"]}

    @app.get("/stream")
    def stream():
        def gen():
            for i in range(3):
                yield f"part{i};"
        return app.response_class(gen(), mimetype="text/plain")

    @app.get("/boom")
    def boom():
        raise RuntimeError("flask view failed")

    return app


app = create_app("flask-module")
