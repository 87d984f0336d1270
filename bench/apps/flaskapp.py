"""A Flask view with a route parameter, a query argument and a JSON response."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/user/<int:user_id>")
def user(user_id):
    return jsonify(id=user_id, name=f"user-{user_id}", verbose=request.args.get("v") == "1")
