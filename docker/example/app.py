"""A minimal Flask app served by kubewsgi (see deploy/examples/flask.yaml)."""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return {"hello": "world"}
