"""Test harness: the wsgi_fcgi server as a subprocess, real web servers in
front of it, and a small streaming HTTP client.

- ``support.processes``: ``WsgiFcgiServer`` (start/ready/stop by PID).
- ``support.webservers``: ``WebServer`` base, ``Nginx``; ``require_executable``.
- ``support.httpclient``: ``HTTPClient`` over ``http.client``, deterministic
  payloads and their sha256.
- ``support.load``: bounded load runs (wrk), nginx/Apache set up for kept-alive
  connections under load, the shared machine's load, connections per worker.
- ``support.requestloop``: ``RequestLoop``, a steady bounded request loop in
  a thread (over FastCGI or through a web server) that records every
  outcome; ``write_module``, an app whose answer is its VERSION.
- ``support.waiting``: ``wait_for``, the one way a test waits (poll an
  observable state until a deadline; never a fixed sleep).
- ``support.net``: the one bind-spec parser (``parse_address``), ``connect``,
  ``free_port``.
- ``support.gate``: ``FifoGate``, a FIFO an app under test blocks on until the
  test opens it (the app's side is in tests/apps/bridge_app.py).
- ``support.procfs``: process states read from /proc (a listener in an epoll
  set, a worker asleep in epoll_wait).
- ``support.modes``: the server run once in each start-up mode (master, fd 0,
  CGI): to its exit, or for one request; ``as_nobody`` (unprivileged).
- ``support.ci``: ``missing()``, a skip on a developer's machine and a
  failure where CI is set.
- ``support.units``: ``unit_section``, a section of a systemd unit file in
  examples/systemd/ as {key: [values]}.

Fixtures that wrap these live in ``tests/conftest.py``.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
FLASK_APP_DIR = EXAMPLES_DIR / "flask_app"
