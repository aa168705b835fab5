"""One start-up sequence: the same failure ends every mode with the same exit
code and one line on stderr (wsgi_fcgi/errors.py).

The modes: the prefork master (``--bind``), the single process a web server
spawns with its listening socket on fd 0, and CGI. The failures: options this
process cannot honour (``--user`` of another account without being root: 2)
and an app that cannot be imported (4). Not being root is had without a
second account: ``unshare --user`` runs the server in a new user namespace,
where it is uid 65534 and cannot switch users.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.modes import MODES, as_nobody, one_error_line, run_to_exit

GOOD_APP = "manager_app:app"
BAD_APP = "no_such_module_xyz:app"

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("mode", MODES)
def test_user_switch_that_cannot_happen_exits_2_in_every_mode(mode: str, tmp_path: Path) -> None:
    result = run_to_exit(mode, tmp_path, ["--user", "daemon"], GOOD_APP, prefix=as_nobody())
    assert result.returncode == 2, result.stderr.decode()
    assert one_error_line(result) == \
        "wsgi_fcgi: error: --user/--group: only a server started as root can switch to another user"
    if mode == "cgi":
        assert result.stdout.startswith(b"Status: 500")  # the client still gets an answer


@pytest.mark.parametrize("mode", MODES)
def test_unimportable_app_exits_4_in_every_mode(mode: str, tmp_path: Path) -> None:
    result = run_to_exit(mode, tmp_path, [], BAD_APP)
    assert result.returncode == 4, result.stderr.decode()
    line = one_error_line(result)
    assert line.startswith("wsgi_fcgi: error: cannot load the app:")
    assert "no_such_module_xyz" in line
    if mode == "cgi":
        assert result.stdout.startswith(b"Status: 500")
