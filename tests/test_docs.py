"""The guides in docs/ cannot rot: every config or script they show is an
example file the integration tests run, included literally.

In a guide, a line ``<!-- include: examples/nginx/app-root.conf -->`` must
be followed by a fenced code block whose content is exactly that file. After
changing an example, refresh the guides with

    python tests/test_docs.py --write

Also checked: every example config/script is shown by some guide, and
relative links in docs/ (and in the examples' READMEs) point at files that
exist.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = REPO_ROOT / "docs"
EXAMPLES_DIR = REPO_ROOT / "examples"

INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->\n", re.M)
FENCE = re.compile(r"(?P<fence>```+)(?P<lang>[\w-]*)\n(?P<body>.*?\n)?(?P=fence)\n", re.S)
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")

# Example files every guide set must show (configs and entry points, not app code).
SHOWN = [
    "examples/nginx/*.conf",
    "examples/apache/*.conf",
    "examples/apache/htaccess",
    "examples/lighttpd/*.conf",
    "examples/systemd/*.service",
    "examples/systemd/*.socket",
    "examples/authorizer/*.py",
    "examples/hooks/*.conf.py",
    "examples/fcgid_authorizer/*.py",
    "examples/*/dispatch.fcgi",
]
# Test wrappers, not deployment configs (the guides link to them instead).
WRAPPERS = {"examples/nginx/nginx.conf", "examples/apache/httpd.conf", "examples/lighttpd/lighttpd.conf"}


def language(path: str) -> str:
    if path.endswith((".py", ".fcgi")):
        return "python"
    if path.endswith((".service", ".socket")):
        return "ini"
    for server in ("nginx", "apache", "lighttpd"):
        if f"/{server}/" in path:
            return server
    return ""


def includes(text: str) -> Iterator[Tuple[str, int, int, str]]:
    """(path, start, end, body) of each include marker's code block; start/end
    span the block (empty, at the marker's end, when there is none)."""
    for marker in INCLUDE.finditer(text):
        fence = FENCE.match(text, marker.end())
        if fence:
            yield marker["path"], fence.start(), fence.end(), fence["body"] or ""
        else:
            yield marker["path"], marker.end(), marker.end(), None  # type: ignore[misc]


def synced(text: str) -> str:
    out, pos = [], 0
    for path, start, end, _ in includes(text):
        content = (REPO_ROOT / path).read_text()
        fence = "````" if "```" in content else "```"
        out += [text[pos:start], f"{fence}{language(path)}\n{content}{fence}\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def guides() -> List[Path]:
    return sorted(DOCS_DIR.glob("*.md"))


def test_there_are_guides():
    names = {p.name for p in guides()}
    for name in ("nginx.md", "apache-mod_proxy_fcgi.md", "apache-mod_fcgid.md", "lighttpd.md", "systemd.md",
                 "troubleshooting.md"):  # fmt: skip
        assert name in names


def test_included_files_are_shown_verbatim():
    stale = []
    for guide in guides():
        text = guide.read_text()
        for path, _, _, body in includes(text):
            assert (REPO_ROOT / path).is_file(), f"{guide.name} includes a missing file {path}"
            if body != (REPO_ROOT / path).read_text():
                stale.append(f"{guide.name}: {path}")
    assert not stale, "guides out of date, run `python tests/test_docs.py --write`:\n" + "\n".join(stale)


def test_every_example_config_is_shown_by_a_guide():
    shown = {path for guide in guides() for path, *_ in includes(guide.read_text())}
    expected = {str(p.relative_to(REPO_ROOT)) for pattern in SHOWN for p in REPO_ROOT.glob(pattern)} - WRAPPERS
    missing = sorted(expected - shown)
    assert not missing, (
        "example configs that no guide in docs/ shows: add a line `<!-- include: PATH -->` where a guide "
        "explains them, then run `python tests/test_docs.py --write`:\n" + "\n".join(missing)
    )


def test_relative_links_resolve():
    broken = []
    for doc in [*guides(), *EXAMPLES_DIR.glob("*/README.md")]:
        for link in LINK.finditer(doc.read_text()):
            target = link["target"].split("#", 1)[0]
            if not target or "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO_ROOT)} -> {link['target']}")
    assert not broken, "broken links:\n" + "\n".join(broken)



def _resolves(name: str) -> bool:
    """Whether ``module.Class.attr``, ``Class.attr`` or ``attr`` names something in
    the package (a bare name: an attribute of some module or class in it)."""
    import importlib
    import inspect
    import pkgutil

    import wsgi_fcgi

    modules = {info.name: importlib.import_module(f"wsgi_fcgi.{info.name}")
               for info in pkgutil.iter_modules(wsgi_fcgi.__path__) if info.name not in ("__main__", "gunicorn")}
    parts = name.split(".")
    if parts[0] in modules:
        starts: List[object] = [modules[parts.pop(0)]]
    else:  # anything of that name in any module, or in any class of one
        starts = [*modules.values()]
        starts += [cls for module in modules.values() for _, cls in inspect.getmembers(module, inspect.isclass)]
    for start in starts:
        target = start
        for part in parts:
            target = getattr(target, part, None)
            if target is None:
                break
        else:
            return True
    return False


def test_how_a_request_flows_names_functions_that_exist():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### How a request flows", 1)[1].split("\n## ", 1)[0]
    names = [n for n in re.findall(r"`([A-Za-z_][\w.]*)`", section) if not n.startswith("wsgi.")
             and n not in ("sendmsg", "recv", "FCGI_KEEP_CONN")]
    assert len(names) > 15
    missing = [n for n in names if not _resolves(n)]
    assert not missing, "README's 'How a request flows' names what the code no longer has: " + ", ".join(missing)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_docs.py --write   (refresh the included example files in docs/)")
    for guide in guides():
        text = guide.read_text()
        new = synced(text)
        if new != text:
            guide.write_text(new)
            print(f"updated {guide.relative_to(REPO_ROOT)}")
