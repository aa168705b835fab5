"""Missing dependencies: a skip on a developer's machine, a failure in CI.

A test that cannot run because something it needs is not installed (a web
server, an Apache module, gunicorn, Django, the PARAMS fixtures) says so
through ``missing()``. Where the environment has ``CI`` set to a true value
(``true``, ``1`` or ``yes``, any case: what GitHub Actions, GitLab and
``.ci/run`` set), that is a failure, so a CI run cannot turn green by
skipping what it was meant to test.

Skips for other reasons (not root, no IPv6, a custom fixture directory) are
not missing dependencies and stay skips.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

TRUE_VALUES = ("1", "true", "yes")


def in_ci() -> bool:
    """Whether this run is CI (``CI`` is ``true``, ``1`` or ``yes``, any case)."""
    return os.environ.get("CI", "").strip().lower() in TRUE_VALUES


def missing(what: str) -> NoReturn:
    """Something the test needs is not there: skip it, or fail it in CI.

    Works inside a test or fixture and at module level."""
    if in_ci():
        pytest.fail(f"{what}, and CI=true", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def require_module(name: str, hint: str) -> ModuleType:
    """``import name``, or ``missing()`` with ``hint`` (how to install it)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not installed ({hint})")
