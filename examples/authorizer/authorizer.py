"""A FastCGI AUTHORIZER for Apache's mod_authnz_fcgi, served by wsgi_fcgi.

    python -m wsgi_fcgi --bind 127.0.0.1:9001 authorizer:app

Apache asks it about every request for a protected location before serving
it (see examples/apache/authorizer.conf and docs/apache-authorizer.md).
wsgi_fcgi calls this WSGI app with ``environ["FCGI_ROLE"] == "AUTHORIZER"``,
the request's headers as ``HTTP_*``, its path in ``PATH_INFO`` and no body:

- answer 200 to allow it; each ``Variable-NAME: value`` header becomes the
  variable NAME of the request inside Apache (a CGI/SSI variable, a FastCGI
  param of the protected app, ``%{reqenv:NAME}`` in the config);
- answer anything else to deny it: Apache sends that status, headers and
  body to the client.

The policy here is a demo: a bearer token per user, in the X-Api-Key header.
"""

import json

# token -> (user, role). Load these from your user store instead.
TOKENS = {
    "alice-secret": ("alice", "editor"),
    "bob-secret": ("bob", "reader"),
}
# Path prefixes a role may not see (PATH_INFO is the path being requested).
FORBIDDEN = {"reader": ("/protected/admin",)}


def _deny(start_response, status, message, headers=()):
    body = json.dumps({"error": message}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


def app(environ, start_response):
    if environ.get("FCGI_ROLE") != "AUTHORIZER":
        return _deny(start_response, "500 Internal Server Error", "configured as a responder, not an authorizer")
    token = environ.get("HTTP_X_API_KEY", "")
    if token not in TOKENS:
        return _deny(start_response, "401 Unauthorized", "missing or unknown API key",
                     [("WWW-Authenticate", 'Bearer realm="protected"')])
    user, role = TOKENS[token]
    path = environ.get("PATH_INFO", "")
    if any(path.startswith(prefix) for prefix in FORBIDDEN.get(role, ())):
        return _deny(start_response, "403 Forbidden", f"{user} may not see {path}")
    start_response("200 OK", [("Variable-AUTHZ_USER", user), ("Variable-AUTHZ_ROLE", role)])
    return [b""]
