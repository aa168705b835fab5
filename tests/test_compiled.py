"""The two forms of the package: pure Python, and the same source compiled by
mypyc (setup.py with WSGI_FCGI_COMPILE=1). Which one runs is said by
--check-config and the status page; WSGI_FCGI_PURE_PYTHON=1 forces pure
Python where the compiled one is installed; a build without the variable
needs no compiler. .ci/run runs the whole suite on the compiled form with
WSGI_FCGI_EXPECT_COMPILED=1, so that a build that silently fell back to pure
Python fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from wsgi_fcgi._compiled import COMPILED_MODULES
from wsgi_fcgi.client import Client

from support import REPO_ROOT
from support.processes import server_env
from test_hardening import APP, APPS_DIR, ROOT_FLAG

pytestmark = pytest.mark.timeout(120)

EXPECT_COMPILED = os.environ.get("WSGI_FCGI_EXPECT_COMPILED") == "1"


def module_files(env: Dict[str, str]) -> Dict[str, str]:
    """Where each module of the request path is imported from, in a fresh interpreter."""
    code = ("import json, importlib; print(json.dumps({m: importlib.import_module('wsgi_fcgi.' + m).__file__ "
            f"for m in {list(COMPILED_MODULES)!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def check_config_form(env: Dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "wsgi_fcgi", *ROOT_FLAG, "--check-config", APP],
                            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith("# form: "))[len("# form: "):]


def test_check_config_says_which_form_runs() -> None:
    files = module_files(server_env([APPS_DIR]))
    compiled = [m for m, path in files.items() if not path.endswith(".py")]
    form = check_config_form(server_env([APPS_DIR]))
    if compiled:
        assert form == "compiled (mypyc): " + ", ".join(compiled)
    else:
        assert form == "pure Python" + (" (WSGI_FCGI_PURE_PYTHON=1)" if os.environ.get("WSGI_FCGI_PURE_PYTHON") else "")
    if EXPECT_COMPILED:
        assert compiled == list(COMPILED_MODULES), files


def test_pure_python_can_be_forced() -> None:
    env = server_env([APPS_DIR], {"WSGI_FCGI_PURE_PYTHON": "1"})
    assert all(path.endswith(".py") for path in module_files(env).values())
    assert check_config_form(env) == "pure Python (WSGI_FCGI_PURE_PYTHON=1)"


def test_the_status_page_says_which_form_runs(wsgi_server: Callable[..., Any]) -> None:
    srv = wsgi_server(APP, "--status-path", "/status", pythonpath=[APPS_DIR])
    report = json.loads(Client(srv.address, timeout=10).request("/status?json").body)
    assert report["implementation"].startswith("compiled (mypyc): " if EXPECT_COMPILED else ("compiled", "pure"))
    metrics = Client(srv.address, timeout=10).request("/status?openmetrics").body.decode()
    assert f'wsgi_fcgi_build_info{{implementation="{report["implementation"]}"}} 1' in metrics


def test_a_build_without_the_variable_needs_no_compiler(tmp_path: Path) -> None:
    """What shared hosting gets from `pip install wsgi_fcgi` with no C compiler: a
    pure-Python wheel, built with the compiler made unusable."""
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false"}
    env.pop("WSGI_FCGI_COMPILE", None)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                             "-w", str(tmp_path), str(REPO_ROOT)], capture_output=True, text=True, timeout=110,
                            env=env)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("wsgi_fcgi-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")  # no compiled part
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsgi_fcgi/protocol.py" in names and not any(n.endswith(".so") for n in names)
