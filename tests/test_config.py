"""The settings table: validation with clear messages, the config file, and
the precedence defaults < file < WSGI_FCGI_ARGS < command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from wsgi_fcgi.config import SETTINGS, Config, ConfigError, load_config_file

APPS_DIR = Path(__file__).resolve().parent / "apps"


@pytest.mark.parametrize("name, value, message", [
    ("workers", "0", "--workers: 0 is less than 1"),
    ("workers", "many", "--workers: 'many' is not a whole number"),
    ("timeout", "-1", "--timeout"),
    ("socket_mode", "999", "--socket-mode"),
    ("pool", "elastic", "--pool: 'elastic' is not one of static, dynamic, ondemand"),
    ("bind", "nonsense", "--bind"),
    ("script_name", "app", "--script-name: 'app' must start with '/'"),
    ("allowed_addr", "10.0.0.300", "--allowed-addr: '10.0.0.300' is not an IP address"),
    ("user", "no-such-user-here", "--user: no user named"),
    ("env", "NO_EQUALS", "--env: 'NO_EQUALS' is not KEY=VALUE"),
    ("env", ["A=1", "=value"], "--env: '=value': the name is empty"),
    ("env", {"A=B": "1"}, "--env: the name 'A=B' contains '='"),
    ("env", "A=x\0y", "--env: 'A' contains a NUL character"),
    ("env", {"A": 1}, "--env: 'A': 1: names and values must be strings"),
    ("rlimit_nofile", "10", "--rlimit-nofile: 10 is less than 64"),
    ("rlimit_nofile", "unlimited", "--rlimit-nofile: 'unlimited' is not a whole number"),
    ("rlimit_core", "-1", "--rlimit-core: -1 is less than 0"),
    ("rlimit_core", "big", "--rlimit-core: 'big' is not a whole number"),
    ("max_worker_memory", "-1", "--max-worker-memory: -1 is less than 0"),
    ("max_worker_memory", "256M", "--max-worker-memory: '256M' is not a whole number"),
])
def test_bad_values_name_the_flag(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config(**{name: value})


def test_env_takes_key_value_strings_or_a_dict() -> None:
    assert Config(env=["A=1", "B=x=y", "C="]).env == {"A": "1", "B": "x=y", "C": ""}
    assert Config(env="A=1").env == {"A": "1"}
    assert Config(env={"A": "1"}).env == {"A": "1"}  # serve(app, env={...}), a config file


def test_rlimit_core_takes_unlimited_as_ulimit_and_systemd_spell_it() -> None:
    assert Config(rlimit_core="unlimited").rlimit_core == "unlimited"
    assert Config(rlimit_core="infinity").rlimit_core == "unlimited"
    assert Config(rlimit_core="0").rlimit_core == 0


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'wokers'"):
        Config(wokers=2)


def test_min_spare_above_max_spare_is_refused() -> None:
    with pytest.raises(ConfigError, match="--min-spare"):
        Config(min_spare=5, max_spare=2)


def test_every_setting_has_a_flag_help_and_a_valid_default() -> None:
    for setting in SETTINGS:
        assert setting.flags and setting.flags[-1].startswith("--"), setting.name
        assert setting.help.strip(), setting.name
    Config()  # every default passes its own validator


def test_config_file_sets_options_by_name(tmp_path: Path) -> None:
    path = tmp_path / "conf.py"
    path.write_text("import multiprocessing\n_cores = 2\nworkers = _cores * 2\nbind = ['unix:/tmp/x.sock']\n"
                    "wsgi_app = 'myapp:app'\n")
    assert load_config_file(str(path)) == {"workers": 4, "bind": ["unix:/tmp/x.sock"], "wsgi_app": "myapp:app"}


def test_config_file_unknown_name_gets_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "conf.py"
    path.write_text("wokers = 4\n")
    with pytest.raises(ConfigError, match="unknown setting 'wokers' .*did you mean 'workers'"):
        load_config_file(str(path))


def test_config_file_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "conf.py"
    path.write_text("workers = 4\nbind = [\n")
    with pytest.raises(ConfigError, match=r"conf.py, line \d+: SyntaxError"):
        load_config_file(str(path))


def check_config(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "WSGI_FCGI_ARGS"}
    full_env.update({"PYTHONPATH": str(APPS_DIR)}, **(env or {}))
    return subprocess.run([sys.executable, "-m", "wsgi_fcgi", "--check-config", *args], capture_output=True,
                          text=True, timeout=30, env=full_env, stdin=subprocess.DEVNULL)


def effective(output: str) -> Dict[str, Any]:
    import ast
    # "# listen: ..." lines (sockets systemd passed) are comments, not settings
    return {k: ast.literal_eval(v) for k, _, v in (line.partition(" = ") for line in output.splitlines()
                                                  if not line.startswith("#"))}


def test_precedence_defaults_file_env_command_line(tmp_path: Path) -> None:
    path = tmp_path / "conf.py"
    path.write_text("workers = 3\ntimeout = 11\nmax_requests = 7\nwsgi_app = 'bridge_app:app'\n")
    result = check_config("--config", str(path), "--timeout", "13",
                          env={"WSGI_FCGI_ARGS": "--timeout 12 --max-requests 8"})
    assert result.returncode == 0, result.stderr
    settings = effective(result.stdout)
    assert settings["workers"] == 3          # file over default
    assert settings["max_requests"] == 8     # environment over file
    assert settings["timeout"] == 13.0       # command line over environment
    assert settings["graceful_timeout"] == 30.0  # default
    assert settings["wsgi_app"] == "bridge_app:app"


def test_check_config_fails_for_an_app_that_does_not_load() -> None:
    result = check_config("no_such_module:app")
    assert result.returncode == 4 and "no_such_module" in result.stderr


def test_missing_app_is_a_usage_error() -> None:
    result = check_config()
    assert result.returncode == 2 and "MODULE:APP is required" in result.stderr


def test_help_is_grouped_by_topic() -> None:
    out = subprocess.run([sys.executable, "-m", "wsgi_fcgi", "--help"], capture_output=True, text=True,
                         timeout=30).stdout
    for section in ("server:", "security:", "application:", "workers:", "limits:", "process:", "logging:"):
        assert section in out


def test_every_flag_the_readme_names_is_a_setting() -> None:
    """The README's flag table is written by hand: it must not name a flag that does not exist."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `-")]
    named = {flag for line in table for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line.split("|")[1])}
    known = {flag for setting in SETTINGS for flag in setting.flags} | {"-c", "--config", "--check-config"}
    assert len(table) > 10
    assert named - known == set()
