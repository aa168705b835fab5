"""The "small Flask app" workload: a Flask hello world at /, the shape of
most framework benchmarks (routing, Request/Response objects, headers)."""

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "Hello, World!"


@app.route("/user/<name>")
def user(name):
    return {"user": name, "ok": True}
