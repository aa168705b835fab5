"""A small Flask app to run behind a web server with wsgi_fcgi.

    python -m wsgi_fcgi --bind unix:/run/flask_app/app.sock app:app

It doubles as the fixture app of the end-to-end tests (tests/test_nginx.py):
every route shows one thing a FastCGI bridge can get wrong (mount point,
UTF-8 paths, request bodies, streamed responses).
"""

import hashlib
import os

from flask import Flask, Response, abort, jsonify, render_template_string, request, url_for

CHUNK_SIZE = 64 * 1024
MAX_DOWNLOAD = 1024**3
_BLOCK = bytes(range(256)) * (CHUNK_SIZE // 256)
_SHIFT = [bytes((b + k) % 256 for b in range(256)) for k in range(256)]


def pattern(size):
    """Yield `size` deterministic bytes in 64 KiB chunks.

    Byte i of the stream is ``(i + i // 65536) % 256``: each chunk differs from
    its neighbours, so a reordered, repeated or lost chunk changes the sha256.
    """
    for start in range(0, size, CHUNK_SIZE):
        block = _BLOCK.translate(_SHIFT[(start // CHUNK_SIZE) % 256])
        yield block[: min(CHUNK_SIZE, size - start)]


def sha256_of_stream(stream):
    """(byte count, hex sha256) of a file-like object, read in chunks."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


INDEX = """<!doctype html>
<title>wsgi_fcgi example</title>
<h1>wsgi_fcgi example</h1>
<ul>
{% for endpoint, args in links %}
  <li><a href="{{ url_for(endpoint, **args) }}">{{ url_for(endpoint, **args) }}</a>
      (<a href="{{ url_for(endpoint, _external=True, **args) }}">{{ url_for(endpoint, _external=True, **args) }}</a>)
{% endfor %}
</ul>
"""

FORM = """<!doctype html>
<title>Form</title>
<form method="post" action="{{ url_for('form') }}">
  <input name="name" placeholder="name"> <input name="comment" placeholder="comment">
  <button>Send</button>
</form>
<form method="post" action="{{ url_for('upload') }}" enctype="multipart/form-data">
  <input type="file" name="file"> <button>Upload</button>
</form>
"""


def create_app():
    app = Flask(__name__)

    @app.route("/")
    def index():
        links = [
            ("hello", {"name": "café"}),
            ("form", {}),
            ("download", {"size": 1000}),
            ("env", {"q": "a b"}),
            ("stream", {}),
        ]
        return render_template_string(INDEX, links=links)

    @app.route("/hello/<name>")
    def hello(name):
        return f"Hello, {name}!", {"Content-Type": "text/plain; charset=utf-8"}

    @app.route("/form", methods=["GET", "POST"])
    def form():
        if request.method == "POST":
            return jsonify(request.form.to_dict(flat=False))
        return render_template_string(FORM)

    @app.post("/upload")
    def upload():
        # Werkzeug spools large multipart files to a temporary file, and we
        # hash it in chunks: the upload is never held in memory whole.
        file = request.files.get("file")
        if file is None:
            abort(400, "no file field")
        size, sha256 = sha256_of_stream(file.stream)
        return jsonify(filename=file.filename, size=size, sha256=sha256)

    @app.post("/echo-sha256")
    def echo_sha256():
        size, sha256 = sha256_of_stream(request.stream)
        return jsonify(size=size, sha256=sha256)

    @app.route("/download/<int:size>")
    def download(size):
        if size > MAX_DOWNLOAD:
            abort(400, "too large")
        return Response(
            pattern(size),
            mimetype="application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    @app.route("/env")
    @app.route("/env/<path:rest>")
    def env(rest=None):
        environ = request.environ
        return jsonify(
            SCRIPT_NAME=environ.get("SCRIPT_NAME"),
            PATH_INFO=environ.get("PATH_INFO"),
            REQUEST_URI=environ.get("REQUEST_URI"),
            QUERY_STRING=environ.get("QUERY_STRING"),
            HTTP_HOST=environ.get("HTTP_HOST"),
            # httpoxy: a client's "Proxy:" header must never show up here.
            HTTP_PROXY=environ.get("HTTP_PROXY"),
            url_scheme=environ.get("wsgi.url_scheme"),
            url_for=url_for("index"),
            url_for_external=url_for("index", _external=True),
            path=request.path,
            full_path=request.full_path,
            args=request.args.to_dict(flat=False),
            pid=os.getpid(),
        )

    @app.route("/whoami")
    def whoami():
        # Behind a FastCGI authorizer (docs/apache-authorizer.md): the user it
        # accepted, and the Variable-AUTHZ_* headers it sent, as CGI variables.
        environ = request.environ
        auth = request.authorization
        return jsonify(
            REMOTE_USER=environ.get("REMOTE_USER"),
            authz={k: v for k, v in environ.items() if k.startswith("AUTHZ_")},
            # The Authorization header, if it reached the app (Apache passes it
            # only with CGIPassAuth On or FcgidPassHeader): its scheme and, for
            # Basic, the user name. Never the password or token.
            authorization=auth and {"type": auth.type, "username": auth.username},
        )

    @app.route("/error")
    def error():
        # Shows where an unhandled exception ends up: a 500 for the client,
        # the traceback on wsgi_fcgi's stderr (the web server's error log
        # when the web server started the app). See docs/troubleshooting.md.
        raise RuntimeError("example error from /error")

    @app.route("/stream")
    def stream():
        def generate():
            for n in range(5):
                yield f"chunk {n}\n"

        return Response(generate(), mimetype="text/plain")

    return app


app = create_app()
