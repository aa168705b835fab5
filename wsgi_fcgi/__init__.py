"""wsgi_fcgi: serve any WSGI application over FastCGI.

Public API: ``serve(app, **options)``, the exceptions a user may catch, ``__version__``.
"""

__version__ = "0.1.0"
