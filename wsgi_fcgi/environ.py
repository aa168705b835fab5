"""FastCGI PARAMS -> PEP 3333 environ.

Strategy: the web server already did the HTTP parsing, so this module only
*normalises* what it was told. The PARAMS arrive as latin-1 ``str`` pairs,
collected into a dict in which a repeated name kept its last value, plus the
pairs those repeats replaced (``protocol.collect_pairs``; the worker's decoder
builds the same in one pass, and ``build_environ`` takes the plain list of
pairs). That dict becomes the environ: repeated headers are joined, then a
fixed list of repairs is applied, each one justified by something a real
server was seen to send. ``docs/environ.md`` states the rules,
numbered as the comments below are:

* duplicates: ``HTTP_*`` pairs are joined, anything else: the last pair wins;
* security: ``HTTP_PROXY`` (httpoxy) is dropped, nothing is ever written to
  ``os.environ``;
* body: empty or non-numeric ``CONTENT_LENGTH``/``CONTENT_TYPE`` are removed,
  ``HTTP_TRANSFER_ENCODING`` is removed when the length is known;
* paths: SCRIPT_NAME/PATH_INFO are re-split so that SCRIPT_NAME is the app's
  mount point and PATH_INFO the rest, repairing nginx's and Apache ProxyPass's
  "whole path in SCRIPT_NAME", lighttpd's "/" key, mod_fcgid rewrites and
  ``proxy-fcgi-pathinfo`` double slashes; a configured mount point wins;
* identity: ``wsgi.url_scheme`` and the PEP 3333 required keys are filled in.

Every value is untrusted (anyone who can reach the FastCGI socket chooses all
of them), so nothing here assumes that one value is a prefix or suffix of
another without checking it first, and nothing raises on odd input. The hot
path uses ``str`` methods only; the percent-decoding of REQUEST_URI is done
only when the path contains a ``%``.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_to_bytes

from .protocol import ROLE_NAMES, collect_pairs

__all__ = ["build_environ", "environ_from_params", "usable_content_length"]

# The constant part of every environ; copied into each one with dict.update().
_WSGI_TEMPLATE: Final[dict[str, object]] = {
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    # STDIN always ends with the empty FCGI_STDIN record, so reading
    # wsgi.input to EOF is safe even without CONTENT_LENGTH.
    "wsgi.input_terminated": True,
}

# Keys the request handler owns; a PARAMS pair must never pre-empt them.
_HANDLER_KEYS: Final = ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper")

# Client headers that CGI maps to CONTENT_* instead; nginx and lighttpd send
# the HTTP_ copies as well, and PEP 3333 (wsgiref.validate) forbids them.
_SHADOW_HEADERS: Final = ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE")

# What build_environ removes from what the server sent (rules 3 and 4 of docs/environ.md).
_UNWANTED_KEYS: Final = ("HTTP_PROXY",) + _SHADOW_HEADERS + _HANDLER_KEYS

_TRUE_HTTPS: Final = frozenset(("on", "1", "yes", "true"))

# A CONTENT_LENGTH longer than this (10**18 bytes and up) is treated as
# garbage: int() of a huge digit string is slow, or raises under the
# int-to-str digit limit of Python 3.11+ (CVE-2020-10735).
_MAX_CONTENT_LENGTH_DIGITS: Final = 18


def usable_content_length(value: str | None) -> int | None:
    """CONTENT_LENGTH as a number, or None when it is absent or not one (the
    environ then has no CONTENT_LENGTH)."""
    if value is not None and value.isdigit() and value.isascii() and len(value) <= _MAX_CONTENT_LENGTH_DIGITS:
        return int(value)
    return None


def build_environ(
    pairs: list[tuple[str, str]],
    *,
    script_name: str | None = None,
    role: int = 1,
    multiprocess: bool = True,
    multithread: bool = False,
) -> dict[str, object]:
    """Build a new PEP 3333 environ from FastCGI PARAMS.

    ``pairs`` are the PARAMS in wire order, names and values decoded as
    latin-1 (so ``value.encode("latin-1")`` gives the wire bytes); names may
    repeat. ``script_name`` is the configured mount point of the app
    (``"/app"``; ``""`` or ``"/"`` for the site root), or ``None`` to detect it
    from what the server sent. ``role`` is the FastCGI role number of the
    request; it is exposed as ``FCGI_ROLE`` unless the server sent that.

    The result has the CGI variables normalised (see the module docstring),
    every key PEP 3333 requires, and the constant ``wsgi.*`` keys. The
    request handler adds ``wsgi.input``, ``wsgi.errors`` and
    ``wsgi.file_wrapper``. Never raises for a list of ``(str, str)`` pairs.
    """
    params, replaced = collect_pairs(pairs)
    return environ_from_params(params, replaced, script_name=script_name, role=role,
                               multiprocess=multiprocess, multithread=multithread)


def environ_from_params(
    params: dict[str, str],
    replaced: list[tuple[str, str]],
    *,
    script_name: str | None = None,
    role: int = 1,
    multiprocess: bool = True,
    multithread: bool = False,
) -> dict[str, object]:
    """``build_environ`` for PARAMS already collected (``protocol.collect_pairs``):
    ``params`` itself is made into the environ and returned."""
    # 1-2. Decode and collect (done by the caller: the last pair won), join repeated HTTP_* headers.
    env = params
    if replaced:
        _join_repeated_headers(env, replaced)

    # 3. httpoxy: a client "Proxy:" header must never look like a proxy setting;
    # the HTTP_ copies of CONTENT_*, and the keys the handler owns, go too.
    # ("in" before "del": compiled, a dict lookup is cheaper than a pop() call)
    for key in _UNWANTED_KEYS:
        if key in env:
            del env[key]

    # 4. Body variables.
    content_length = env.get("CONTENT_LENGTH")
    if content_length is not None:
        if usable_content_length(content_length) is not None:
            # STDIN is never chunked; the header would make Werkzeug ignore the length.
            env.pop("HTTP_TRANSFER_ENCODING", None)
        else:
            del env["CONTENT_LENGTH"]
    if env.get("CONTENT_TYPE") == "":
        del env["CONTENT_TYPE"]
    if env.get("REMOTE_USER") == "":
        # nginx sends REMOTE_USER="" for anonymous requests; "present" must mean "authenticated".
        del env["REMOTE_USER"]

    # 5. SCRIPT_NAME / PATH_INFO.
    env["SCRIPT_NAME"], env["PATH_INFO"] = _split_path(env, script_name)

    # 6. Scheme.
    https = env.get("HTTPS")
    scheme = env.get("REQUEST_SCHEME")
    is_https = (https is not None and https.lower() in _TRUE_HTTPS) or (
        scheme is not None and scheme.lower() == "https"
    )

    # 7. Server identity, 8. other required keys.
    if not env.get("SERVER_NAME") or not _is_port(env.get("SERVER_PORT")):
        _fill_server(env, is_https)
    if not env.get("SERVER_PROTOCOL"):
        env["SERVER_PROTOCOL"] = "HTTP/1.0"
    if not env.get("REQUEST_METHOD"):
        env["REQUEST_METHOD"] = "GET"
    if "QUERY_STRING" not in env:
        env["QUERY_STRING"] = ""
    if "FCGI_ROLE" not in env:
        env["FCGI_ROLE"] = ROLE_NAMES.get(role) or str(role)

    environ: dict[str, object] = env  # type: ignore[assignment]  # from here on not all values are str
    environ.update(_WSGI_TEMPLATE)
    if is_https:
        environ["wsgi.url_scheme"] = "https"
    if not multiprocess:
        environ["wsgi.multiprocess"] = False
    if multithread:
        environ["wsgi.multithread"] = True
    return environ


def _is_joined_header(name: str) -> bool:
    """A name whose repeated values are joined: a client header, except HTTP_HOST."""
    return name.startswith("HTTP_") and name != "HTTP_HOST"


def _join_repeated_headers(env: dict[str, str], replaced: list[tuple[str, str]]) -> None:
    """Repeated names: ``HTTP_*`` values are joined, in wire order, as HTTP
    does for a repeated header field (``"; "`` for cookies, RFC 9113 8.2.3);
    any other name keeps its last value, already in ``env``, because nginx
    sends an included ``fastcgi_param`` and its later override as two pairs
    (its documented overrides of SCRIPT_NAME and HTTP_HOST repeat on every
    request). HTTP_HOST is one of those: a client cannot send Host twice
    (nginx answers 400), but the documented ``fastcgi_param HTTP_HOST
    $host:$server_port`` override follows Debian's ``HTTP_HOST $host``."""
    earlier: dict[str, list[str]] = {}
    for name, value in replaced:
        if _is_joined_header(name):
            earlier.setdefault(name, []).append(value)
    for name, values in earlier.items():
        values.append(env[name])
        env[name] = ("; " if name == "HTTP_COOKIE" else ", ").join(values)


def _split_path(env: dict[str, str], mount: str | None) -> tuple[str, str]:
    """Return (SCRIPT_NAME, PATH_INFO) for the request (docs/environ.md, rule 5).

    The server's own values are preferred: they are percent-decoded *and*
    normalised (merged slashes, resolved dot segments), which the raw
    REQUEST_URI is not. REQUEST_URI is used only to detect and repair the
    known wrong splits, and a configured mount point overrides the result
    whenever it is a path-segment prefix of the full path.
    """
    sn = env.get("SCRIPT_NAME", "")
    pi = env.get("PATH_INFO")
    if pi is None and "SCRIPT_NAME" not in env:
        # Neither sent: the AUTHORIZER role (spec 6.3) -- the path being
        # authorized is the one the client asked for, normalised as the server
        # does before it routes: "/a//admin" or "/a/./admin" must not slip
        # past a check for "/a/admin" that the app behind will then serve.
        uri = env.get("REQUEST_URI")
        path = _decoded_request_path(uri) if uri else None
        sn, pi = "", _normalized_path(path) if path else ""
        return _apply_mount(sn, pi, mount)
    if pi is None:
        pi = ""
        # 5.1 Server did not split: the whole decoded path is in SCRIPT_NAME.
        split_known = not _server_did_not_split(env)
        if not split_known:
            sn, pi = "", sn
    else:
        split_known = True

    if split_known:
        uri = env.get("REQUEST_URI")
        path = _decoded_request_path(uri) if uri else None
        # 5.2 Compare with the path the client asked for.
        if path is not None and sn + pi != path:
            if not _is_segment_prefix(sn, path):
                # Internal rewrite (mod_fcgid + RewriteRule to dispatch.fcgi):
                # SCRIPT_NAME is not in the URL at all.
                if pi and path.endswith(pi):
                    sn = path[: len(path) - len(pi)]
                else:
                    sn, pi = "", path
            elif path == sn and (pi == "/" or pi == "//"):
                # Apache proxy-fcgi-pathinfo, "ProxyPass /app .../": GET /app.
                pi = ""
            elif pi.startswith("//") and not path.startswith("//", len(sn)):
                # ... and the doubled slash it adds to every other request.
                pi = pi[1:]

    # 5.3 SCRIPT_NAME never ends with "/": move trailing slashes to PATH_INFO
    # (this turns lighttpd's "/" for GET / into "", "/"), and both are
    # absolute paths or empty.
    if sn.endswith("/"):
        stripped = sn.rstrip("/")
        pi = sn[len(stripped) :] + pi
        sn = stripped
    if sn and sn[0] != "/":
        sn = "/" + sn
    if pi and pi[0] != "/":
        pi = "/" + pi

    return _apply_mount(sn, pi, mount)


def _apply_mount(sn: str, pi: str, mount: str | None) -> tuple[str, str]:
    """5.4 A configured mount point wins when it fits the path."""
    if mount is not None:
        mount = _normalize_mount(mount)
        full = sn + pi
        if not mount:
            return "", full
        if not full:
            # Nothing at all to go on (e.g. cgi-fcgi with a bare environment):
            # the request is for the app's root.
            return mount, ""
        if _is_segment_prefix(mount, full):
            return mount, full[len(mount) :]
    return sn, pi


def _server_did_not_split(env: dict[str, str]) -> bool:
    """True when a server that sent no PATH_INFO put the whole request path
    in SCRIPT_NAME: nginx without ``fastcgi_split_path_info``, and Apache
    mod_proxy_fcgi's ProxyPass (its SCRIPT_FILENAME, a ``proxy:fcgi://host/``
    URL, is then not a file under the document root; with SetHandler or
    mod_fcgid it is, and Apache did a real CGI split)."""
    software = env.get("SERVER_SOFTWARE", "")
    if software.startswith("nginx/"):
        return True
    if not software.startswith("Apache"):
        return False
    filename = env.get("SCRIPT_FILENAME")
    if filename is None:
        return False
    if filename.startswith("proxy:"):
        # proxy:fcgi://localhost/path, proxy:fcgi://host:port/path -> /path
        scheme_end = filename.find("://")
        if scheme_end < 0:
            return True
        path_start = filename.find("/", scheme_end + 3)
        filename = filename[path_start:] if path_start >= 0 else ""
    for root_key in ("DOCUMENT_ROOT", "CONTEXT_DOCUMENT_ROOT"):
        root = env.get(root_key)
        if root and _is_under(filename, root):
            return False
    return True


def _is_under(path: str, root: str) -> bool:
    """Whether filesystem ``path`` is ``root`` or inside it."""
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _is_segment_prefix(prefix: str, path: str) -> bool:
    """Whether ``prefix`` is ``path`` or ends at a ``/`` boundary of it
    (``/app`` is a segment prefix of ``/app/x`` but not of ``/apple``)."""
    if not prefix or prefix == path:
        return True
    if not path.startswith(prefix):
        return False
    return prefix[-1] == "/" or path[len(prefix)] == "/"


def _decoded_request_path(uri: str) -> str | None:
    """The percent-decoded path of a raw REQUEST_URI, as a latin-1 string
    (the same form the servers use for SCRIPT_NAME/PATH_INFO), or None when
    the target has no usable path (``*``, garbage)."""
    end = uri.find("?")
    raw = uri if end < 0 else uri[:end]
    if not raw.startswith("/"):
        # absolute-form target: http://host/path
        authority = raw.find("://")
        if authority < 0:
            return None
        start = raw.find("/", authority + 3)
        raw = raw[start:] if start >= 0 else "/"
    if "%" not in raw:
        return raw
    try:
        return unquote_to_bytes(raw.encode("latin-1")).decode("latin-1")
    except UnicodeEncodeError:  # not a latin-1 string, so not from the wire
        return None


def _normalized_path(path: str) -> str:
    """A decoded absolute path as Apache and nginx normalise it by default
    (MergeSlashes, merge_slashes; RFC 3986 remove_dot_segments): repeated
    slashes merged, "." and ".." segments resolved, never above the root; a
    trailing slash kept."""
    if "//" not in path and "/." not in path:
        return path
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    last = path[path.rfind("/") + 1 :]
    trailing = "/" if segments and last in ("", ".", "..") else ""
    return "/" + "/".join(segments) + trailing


def _normalize_mount(mount: str) -> str:
    """``"/app/"`` -> ``"/app"``, ``"app"`` -> ``"/app"``, ``"/"`` -> ``""``."""
    mount = mount.rstrip("/")
    if mount and mount[0] != "/":
        mount = "/" + mount
    return mount


def _is_port(port: str | None) -> bool:
    return port is not None and port.isdigit() and port.isascii()


def _fill_server(env: dict[str, str], is_https: bool) -> None:
    """Fill in a missing SERVER_NAME / SERVER_PORT (PEP 3333 requires both)
    from HTTP_HOST, else ``localhost`` and the scheme's default port. A value
    the server did send is kept."""
    host = env.get("HTTP_HOST", "")
    name, port = _parse_host(host) if host else ("", "")
    if not env.get("SERVER_NAME"):
        env["SERVER_NAME"] = name or "localhost"
    if not _is_port(env.get("SERVER_PORT")):
        env["SERVER_PORT"] = port or ("443" if is_https else "80")


def _parse_host(host: str) -> tuple[str, str]:
    """Split a Host header into (name, port); port is ``""`` when absent or
    not numeric. IPv6 literals keep their brackets (``[::1]:8080`` ->
    ``("[::1]", "8080")``), as Apache sends SERVER_NAME, so that PEP 3333's
    URL reconstruction stays valid."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, ""
        name, rest = host[: end + 1], host[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        # no port, or a bare (invalid) IPv6 address
        return host, ""
    if not _is_port(port):
        port = ""
    return name, port
