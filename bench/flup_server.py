"""flup 1.0.3 prefork FastCGI server, as people deploy it:

    python flup_server.py SOCKET_PATH MODULE:APP WORKERS

minSpare = maxSpare = maxChildren = WORKERS, so the pool is static like the
other backends'. The app is imported before the fork (shared pages).
"""

import importlib
import os
import sys

from flup.server.fcgi_fork import WSGIServer


def main():
    sock, spec, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module, _, name = spec.partition(":")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    app = getattr(importlib.import_module(module), name or "application")
    WSGIServer(app, bindAddress=sock, umask=0o077, minSpare=workers, maxSpare=workers,
               maxChildren=workers, maxRequests=0).run()


if __name__ == "__main__":
    main()
