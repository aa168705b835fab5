"""Build script: pure Python unless WSGI_FCGI_COMPILE=1.

With WSGI_FCGI_COMPILE=1 (and mypy in the build environment: ``pip install
mypy`` then ``pip install --no-build-isolation``), the modules a request runs
through (``wsgi_fcgi._compiled.COMPILED_MODULES``) are also compiled with
mypyc, from the same source; the .py files stay beside them, and
WSGI_FCGI_PURE_PYTHON=1 makes the package use those. Without it nothing is
compiled and no compiler is needed. README.md, "Install", has the commands.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup


def compiled_extensions() -> list[Any]:
    if os.environ.get("WSGI_FCGI_COMPILE", "") in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit("WSGI_FCGI_COMPILE=1 compiles with mypyc, which is not installed here: "
                         "pip install mypy setuptools wheel, then build with --no-build-isolation "
                         "(or unset WSGI_FCGI_COMPILE for the pure-Python package)") from None

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "wsgi_fcgi"))
    from _compiled import COMPILED_MODULES  # the list only: no need to import the package

    return mypycify([f"wsgi_fcgi/{name}.py" for name in COMPILED_MODULES], opt_level="3")


setup(ext_modules=compiled_extensions())
