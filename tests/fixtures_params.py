"""Load the FastCGI PARAMS fixtures captured from real web servers.

Where they come from, first match wins:

1. ``$WSGI_FCGI_FIXTURES`` (a ``params`` directory: ``<server>-<variant>/<request>.json``);
2. ``tests/fixtures/params`` -- the copy committed with the tests, so that a fresh
   clone (CI) has them;
3. ``../shared/fixtures/params`` next to the repository, the original capture.

The format is described in that directory's ``README.md`` (in ``../shared``).
Tests that need the fixtures call ``require_fixtures_dir()``: it skips when none
is found, except in CI (``support.ci.in_ci()``), where a missing fixture set is a failure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from support.ci import missing

ENV_VAR = "WSGI_FCGI_FIXTURES"
IN_REPO_DIR = Path(__file__).resolve().parent / "fixtures" / "params"
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "params"


def fixtures_dir() -> Path | None:
    """The fixture directory to use, or None when there is none."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    for candidate in (IN_REPO_DIR, SHARED_DIR):
        if candidate.is_dir():
            return candidate
    return None


def require_fixtures_dir() -> Path:
    """The fixture directory; skip the test (fail under CI=true) without one."""
    path = fixtures_dir()
    if path is not None and path.is_dir():
        return path
    reason = (
        f"FastCGI PARAMS fixtures not found (looked at ${ENV_VAR}={os.environ.get(ENV_VAR)!r}, "
        f"{IN_REPO_DIR}, {SHARED_DIR})"
    )
    missing(reason)


@dataclass(frozen=True)
class ParamsFixture:
    """One captured request (one ``<request>.json``)."""

    variant: str  # directory name, e.g. "nginx-mounted"
    name: str  # request name, e.g. "get-utf8"
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.variant}/{self.name}"

    @property
    def forwarded(self) -> bool:
        """False when the server answered the request itself (no FastCGI)."""
        return self.data["fastcgi"] is not None

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """PARAMS in wire order, latin-1 strings, duplicates kept."""
        return [(name, value) for name, value in self.data["fastcgi"]["params"]]

    @property
    def params(self) -> dict[str, list[str]]:
        """Every value sent for each name."""
        result: dict[str, list[str]] = {}
        for name, value in self.pairs:
            result.setdefault(name, []).append(value)
        return result

    @property
    def stdin_length(self) -> int:
        return int(self.data["fastcgi"]["stdin_length"])

    @property
    def app_mount(self) -> str:
        """The app's mount point as the fixture states it ("/" or "/app")."""
        return str(self.data["server"]["app_mount"])

    @property
    def mount(self) -> str:
        """The mount as PEP 3333 spells SCRIPT_NAME: "" for the root."""
        return self.app_mount.rstrip("/")

    @property
    def method(self) -> str:
        return str(self.data["request"]["method"])

    @property
    def target(self) -> str:
        return str(self.data["request"]["target"])

    @property
    def decoded_path(self) -> str:
        """The request path, percent-decoded to a latin-1 string, as the servers
        put it in SCRIPT_NAME/PATH_INFO (%2F becomes "/", %3F becomes "?")."""
        raw = self.target.split("?", 1)[0]
        return unquote_to_bytes(raw.encode("latin-1")).decode("latin-1")

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def tls(self) -> bool:
        return self.variant.endswith("-tls")


def load_all(path: Path | None = None) -> list[ParamsFixture]:
    """Every request fixture under ``path`` (default: ``fixtures_dir()``), sorted."""
    root = path if path is not None else fixtures_dir()
    if root is None or not root.is_dir():
        return []
    result = []
    for file in sorted(root.glob("*/*.json")):
        if file.name.startswith("_"):
            continue
        with file.open(encoding="utf-8") as fp:
            data = json.load(fp)
        result.append(ParamsFixture(variant=file.parent.name, name=file.stem, data=data))
    return result


def load_forwarded(path: Path | None = None) -> list[ParamsFixture]:
    """The fixtures of requests that reached the app."""
    return [fixture for fixture in load_all(path) if fixture.forwarded]
