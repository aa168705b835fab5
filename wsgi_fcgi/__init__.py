"""wsgi_fcgi: serve any WSGI application over FastCGI.

Public API: ``serve(app, **options)``, the exceptions a user may catch, ``__version__``.
"""

from __future__ import annotations

import os
import sys
from typing import Any
from collections.abc import Callable

from ._compiled import prefer_source

prefer_source(os.path.dirname(os.path.abspath(__file__)))  # WSGI_FCGI_PURE_PYTHON=1: before any other submodule

from .config import ConfigError  # noqa: E402
from .handler import ClientDisconnected, RequestAborted, RequestBodyTruncated  # noqa: E402

__version__ = "0.1.0"
__all__ = ["serve", "ConfigError", "ClientDisconnected", "RequestAborted", "RequestBodyTruncated", "__version__"]


def serve(app: Callable[..., Any], **options: Any) -> None:
    """Serve ``app`` over FastCGI; options are the command-line settings by name
    (``serve(app, workers=4, bind="unix:/run/app.sock")``).

    From a ``dispatch.fcgi`` that a web server spawns, no option is needed: the
    listening socket on fd 0 is found and one process serves requests. Run as
    a CGI script (``AddHandler cgi-script .fcgi``), it serves that one request
    and returns. Raises ConfigError for a bad option; exits with the server's
    exit code (1 under CGI when the response is a 500 or incomplete).
    """
    from .cli import run
    from .config import Config

    code = run(Config(**options), app=app)
    if code:
        sys.exit(code)
