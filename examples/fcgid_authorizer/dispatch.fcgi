#!/usr/bin/env python3
"""Entry point of the authorizer for Apache mod_fcgid (FcgidAuthenticator,
FcgidAuthorizer, FcgidAccessChecker): Apache starts this file itself and
hands it a listening socket as fd 0; serve() finds it there.
See docs/apache-authorizer.md.
"""

import os
import sys

# Path of a virtualenv that holds wsgi_fcgi, e.g. "/home/me/venv".
# Leave empty to use the packages of the python3 found on PATH.
VIRTUALENV = ""
# Directory that holds authorizer.py, e.g. "/home/me/authorizer". Keep it outside
# the document root, or the web server may serve your source code. Leave
# empty for the directory of this file.
APP_DIR = ""

if VIRTUALENV:
    python = os.path.join(VIRTUALENV, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(VIRTUALENV):
        # Re-run under the virtualenv's interpreter: its compiled packages
        # match it, and fd 0 (the listening socket) survives exec.
        if not os.access(python, os.X_OK):
            # Ends up in the web server's error log, before its "End of script
            # output before headers".
            sys.exit(f"{__file__}: VIRTUALENV: no {python} (or it is not executable)")
        os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])

sys.path.insert(0, APP_DIR or os.path.dirname(os.path.abspath(__file__)))

from wsgi_fcgi import serve  # noqa: E402

from authorizer import app  # noqa: E402

serve(app)
