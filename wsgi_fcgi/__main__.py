"""``python -m wsgi_fcgi``."""

import sys

from .cli import main

sys.exit(main())
