#!/usr/bin/env python3
"""FastCGI entry point of the Django example for shared hosting (Apache
mod_fcgid, lighttpd bin-path): the web server starts this file itself and
hands it a listening socket as fd 0; serve() finds it there.
See docs/apache-mod_fcgid.md.
"""

import os
import sys

# Path of a virtualenv that holds Django and wsgi_fcgi, e.g. "/home/me/venv".
# Leave empty to use the packages of the python3 found on PATH.
VIRTUALENV = ""
# Directory that holds the project (the one with mysite/), e.g.
# "/home/me/django_app". Keep it outside the document root. Leave empty for
# the directory of this file.
APP_DIR = ""

if VIRTUALENV:
    python = os.path.join(VIRTUALENV, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(VIRTUALENV):
        # Re-run under the virtualenv's interpreter; fd 0 survives exec.
        if not os.access(python, os.X_OK):
            # Ends up in the web server's error log, before its "End of script
            # output before headers".
            sys.exit(f"{__file__}: VIRTUALENV: no {python} (or it is not executable)")
        os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])

sys.path.insert(0, APP_DIR or os.path.dirname(os.path.abspath(__file__)))
# mod_fcgid passes no environment but PATH: settings go here.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from wsgi_fcgi import serve  # noqa: E402

from mysite.wsgi import application  # noqa: E402

serve(application)
