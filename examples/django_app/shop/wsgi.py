"""The WSGI application gunicorn serves:

    .venv/bin/python -m gunicorn --chdir examples/django_app -b 127.0.0.1:8004 shop.wsgi:application

Each worker fetches the issuer's signing keys as it loads this module.
"""

import logging
import os

from django.core.wsgi import get_wsgi_application

from bearerguard import WarmUpError
from bearerguard.django import get_server

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
application = get_wsgi_application()

try:  # an issuer that is briefly down only costs a warning (503 until it answers)
    get_server().warm_up()
except WarmUpError as exc:
    logging.getLogger("shopping").warning("starting without signing keys: %s", exc)
