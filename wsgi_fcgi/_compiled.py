"""Which form of the package is running: compiled by mypyc, or pure Python.

Strategy: the same source is the pure-Python package and, compiled by mypyc
(``WSGI_FCGI_COMPILE=1`` at build time, see README), an optional faster one:
a compiled module is an extension module next to its ``.py``, which Python
imports first. ``WSGI_FCGI_PURE_PYTHON=1`` makes the package import its
``.py`` files even where the compiled ones are installed (``__init__.py``
installs the finder below before any submodule is imported).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

# The modules on a request's path: the ones a build compiles (setup.py).
COMPILED_MODULES = ("protocol", "environ", "handler", "worker", "scoreboard", "logs", "status")


if TYPE_CHECKING:  # what mypy and mypyc see: mypyc reads the decorator when it compiles
    from mypy_extensions import mypyc_attr as mypyc_attr
else:
    def mypyc_attr(*args: Any, **options: Any) -> Callable[[T], T]:
        """mypy_extensions.mypyc_attr, at run time: nothing to do (and no
        dependency: the package needs nothing but the standard library)."""
        return lambda cls: cls


def form() -> str:
    """"compiled (mypyc): ..." or "pure Python", as --check-config and the status page say it."""
    compiled = [name for name in COMPILED_MODULES if _is_compiled(importlib.import_module(f"wsgi_fcgi.{name}"))]
    if not compiled:
        return "pure Python" + (" (WSGI_FCGI_PURE_PYTHON=1)" if pure_python_forced() else "")
    return "compiled (mypyc): " + ", ".join(compiled)


def _is_compiled(module: ModuleType) -> bool:
    path = getattr(module, "__file__", None) or ""
    return not path.endswith(".py")


def run_signal_handlers() -> None:
    """Run the Python-level signal handlers that are pending.

    CPython runs them when it next executes bytecode (or when a system call is
    interrupted). Compiled code executes none: an idle compiled worker woken by
    its signal pipe -- the signal arrived before its epoll_wait, so nothing was
    interrupted -- would go back to waiting with TERM's flag unset. Calling this
    function, which stays Python (this module is never compiled), runs them."""


def pure_python_forced() -> bool:
    return os.environ.get("WSGI_FCGI_PURE_PYTHON", "") not in ("", "0")


class _SourceOnly:
    """A meta-path finder for wsgi_fcgi's own submodules that takes the .py file."""

    def __init__(self, package_dir: str) -> None:
        self.package_dir = package_dir

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        if not name.startswith("wsgi_fcgi."):
            return None
        source = os.path.join(self.package_dir, *name.split(".")[1:]) + ".py"
        if not os.path.exists(source):
            return None
        loader = importlib.machinery.SourceFileLoader(name, source)
        return importlib.util.spec_from_file_location(name, source, loader=loader)


def prefer_source(package_dir: str) -> Callable[[], None] | None:
    """With WSGI_FCGI_PURE_PYTHON set, import the package's .py files."""
    if not pure_python_forced():
        return None
    finder = _SourceOnly(package_dir)
    sys.meta_path.insert(0, finder)
    return lambda: sys.meta_path.remove(finder)
