"""mod_fcgid's own authorizer roles (FcgidAuthenticator, FcgidAuthorizer,
FcgidAccessChecker), served by wsgi_fcgi; Apache starts it itself through
dispatch.fcgi, as it starts the app it protects.

See examples/apache/fcgid-authorizer.conf and docs/apache-authorizer.md.
mod_fcgid sends all three with the FastCGI AUTHORIZER role (so
``environ["FCGI_ROLE"] == "AUTHORIZER"``) and says which one it means in
``environ["FCGI_APACHE_ROLE"]``: ``AUTHENTICATOR``, ``AUTHORIZER`` or
``ACCESS_CHECKER``. There is no body; the path asked for is in
``PATH_INFO`` (mod_fcgid sends only REQUEST_URI; wsgi_fcgi decodes and
normalises it as Apache does).

- answer 200 to pass the request on; each ``Variable-NAME: value`` header
  becomes the variable NAME of the request (a CGI variable of the protected
  app);
- anything else fails it: Apache then answers with its own 401 (the
  authenticator, the authorizer) or 403 (the access checker).

The policy here is a demo: users and passwords in a dict, a path prefix a
role may not see, a path closed to everyone.
"""

import hmac

# user -> (password, role). Load these from your user store instead; keep
# hashes, not passwords.
USERS = {
    "alice": ("alice-password", "editor"),
    "bob": ("bob-password", "reader"),
}
# Path prefixes a role may not see (FcgidAuthorizer).
FORBIDDEN = {"reader": ("/private/admin",)}
# What each role may do, passed on to the app (FcgidAuthorizer).
SCOPES = {"editor": "write", "reader": "read"}
# Path prefixes closed to everyone, signed in or not (FcgidAccessChecker).
CLOSED = ("/private/closed",)


def _answer(environ, start_response, status, variables=()):
    # One line per decision in Apache's error log (mod_fcgid sends wsgi.errors
    # there): which role, whom, which path. Never the password.
    print(f"authorizer: {environ.get('FCGI_APACHE_ROLE')} user={environ.get('REMOTE_USER', '-')} "
          f"{_path(environ)}: {status}", file=environ["wsgi.errors"], flush=True)
    # On 200 only the Variable-* headers count; mod_fcgid ignores the body.
    start_response(status, [("Content-Type", "text/plain"), *variables])
    return [b""]


def _path(environ):
    # Not REQUEST_URI: that is the raw request, where "/private//closed" or
    # "/private/./closed" would pass a prefix check for the path Apache then
    # serves as /private/closed. wsgi_fcgi normalises PATH_INFO as Apache does.
    return environ.get("PATH_INFO", "")


def check_access(environ, start_response):
    """FcgidAccessChecker: before anyone signs in (no REMOTE_USER yet)."""
    if _path(environ).startswith(CLOSED):
        return _answer(environ, start_response, "403 Forbidden")
    return _answer(environ, start_response, "200 OK", [("Variable-AUTHZ_ACCESS", "open")])


def authenticate(environ, start_response):
    """FcgidAuthenticator: HTTP Basic credentials in REMOTE_USER and REMOTE_PASSWD."""
    user = environ.get("REMOTE_USER", "")
    password = environ.get("REMOTE_PASSWD", "")
    known = USERS.get(user)
    # PEP 3333: environ strings carry the wire bytes as latin-1; browsers send UTF-8.
    if known is None or not hmac.compare_digest(known[0].encode(), password.encode("latin-1")):
        return _answer(environ, start_response, "401 Unauthorized")
    return _answer(environ, start_response, "200 OK", [("Variable-AUTHZ_ROLE", known[1])])


def authorize(environ, start_response):
    """FcgidAuthorizer: REMOTE_USER is the signed-in user; may they see this path?"""
    user = environ.get("REMOTE_USER", "")
    role = USERS[user][1] if user in USERS else ""
    if not role or _path(environ).startswith(FORBIDDEN.get(role, ())):
        return _answer(environ, start_response, "403 Forbidden")
    return _answer(environ, start_response, "200 OK", [("Variable-AUTHZ_SCOPE", SCOPES[role])])


ROLES = {"ACCESS_CHECKER": check_access, "AUTHENTICATOR": authenticate, "AUTHORIZER": authorize}


def app(environ, start_response):
    role = environ.get("FCGI_APACHE_ROLE")
    if environ.get("FCGI_ROLE") != "AUTHORIZER" or role not in ROLES:
        return _answer(environ, start_response, "500 Internal Server Error")
    return ROLES[role](environ, start_response)
