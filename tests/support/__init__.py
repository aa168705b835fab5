"""Test harness: the wsgi_fcgi server as a subprocess, real web servers in
front of it, and a small streaming HTTP client.

- ``support.processes``: ``WsgiFcgiServer`` (start/ready/stop by PID).
- ``support.webservers``: ``WebServer`` base, ``Nginx``; ``require_executable``.
- ``support.httpclient``: ``HTTPClient`` over ``http.client``, deterministic
  payloads and their sha256.
- ``support.load``: bounded load runs (wrk), nginx/Apache set up for kept-alive
  connections under load, the shared machine's load, connections per worker.

Fixtures that wrap these live in ``tests/conftest.py``.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
FLASK_APP_DIR = EXAMPLES_DIR / "flask_app"
