"""MODULE:APP -> the WSGI callable, the way gunicorn reads it.

Strategy: ``pkg.mod:app``, ``pkg.mod`` (then ``application``, then ``app``),
and ``pkg.mod:create_app()`` / ``create_app('x', debug=True)`` factory calls
with literal arguments. Whatever goes wrong becomes one ``AppLoadError`` whose
message names the module and the error, with the file and line when the error
is inside the user's code -- one line for the user, never a traceback wall.
"""

from __future__ import annotations

import importlib
import keyword
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

from .errors import EXIT_APP_LOAD_ERROR, StartupError

if TYPE_CHECKING:
    import ast

DEFAULT_NAMES = ("application", "app")


class AppLoadError(Exception):
    """The app named on the command line cannot be loaded."""


def load_app_at_startup(spec: str) -> Callable[..., Any]:
    """load_app for a start-up path: an app that cannot be loaded ends the
    server with exit 4, in every mode."""
    try:
        return load_app(spec)
    except AppLoadError as exc:
        raise StartupError(f"cannot load the app: {exc}", EXIT_APP_LOAD_ERROR) from None


def load_app(spec: str) -> Callable[..., Any]:
    module_name, _, expression = spec.partition(":")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"{spec!r} is not MODULE:APP (e.g. myproject.wsgi:application)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import(module_name)
    app = _resolve(module, module_name, expression.strip())
    if not callable(app):
        raise AppLoadError(f"{spec}: {type(app).__name__} object is not a WSGI callable")
    return app  # type: ignore[no-any-return]


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name[len(exc.name):][:1] in ("", "."):
            raise AppLoadError(f"cannot import module {module_name!r}: no module named {exc.name!r} "
                               f"(current directory: {os.getcwd()})") from None
        raise AppLoadError(f"error importing {module_name!r}: {_one_line(exc)}") from None
    except BaseException as exc:  # noqa: B902 - SystemExit in app code is an import failure too
        raise AppLoadError(f"error importing {module_name!r}: {_one_line(exc)}") from None


def _resolve(module: Any, module_name: str, expression: str) -> Any:
    if not expression:
        for name in DEFAULT_NAMES:
            if hasattr(module, name):
                return getattr(module, name)
        raise AppLoadError(f"module {module_name!r} has no 'application' or 'app'; name one as {module_name}:NAME")
    name, args, kwargs = _parse_expression(expression, module_name)
    target = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise AppLoadError(f"module {module_name!r} has no attribute {name!r}")
        target = getattr(target, part)
    if args is None:
        return target
    try:
        return target(*args, **kwargs)
    except Exception as exc:
        raise AppLoadError(f"calling {module_name}:{expression} failed: {_one_line(exc)}") from None


def _parse_expression(expression: str, module_name: str) -> tuple[str, Any, dict[str, Any]]:
    """``name`` -> (name, None, {}); ``factory(1, x='y')`` -> (factory, [1], {'x': 'y'})."""
    if all(part.isidentifier() and not keyword.iskeyword(part) for part in expression.split(".")):
        # The usual spec: no need for ast, which the workers would otherwise carry for this
        # alone (0.5 MiB per worker, bench/rss.py).
        return expression, None, {}
    import ast

    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise AppLoadError(f"{expression!r} is neither a name nor a call in {module_name}") from None
    if isinstance(node, ast.Call):
        try:
            args: list[Any] = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            raise AppLoadError(f"{expression!r}: factory arguments must be literals") from None
        return _dotted(node.func), args, kwargs
    return _dotted(node), None, {}


def _dotted(node: ast.AST) -> str:
    import ast

    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise AppLoadError(f"{ast.dump(node)} is not a name")


def _one_line(exc: BaseException) -> str:
    """``Type: message (file, line N)``, pointing at the innermost frame of the user's code."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    elif user_frames:
        where = f" ({user_frames[-1].filename}, line {user_frames[-1].lineno})"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}{where}" if message else f"{type(exc).__name__}{where}"
