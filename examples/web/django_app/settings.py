"""The smallest Django settings that run this example: one app (``scans``), no database.

Set DJANGO_SECRET_KEY (and DJANGO_DEBUG=1 in development) in the environment.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "development only: set DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "urls"
INSTALLED_APPS = ["scans"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The admin page's POSTs carry the CSRF token (page.html reads it from the cookie).
    "django.middleware.csrf.CsrfViewMiddleware",
    # pymgr's errors as the answers a browser should get (scans/errors.py).
    "scans.errors.PymgrErrorMiddleware",
]
DATABASES: dict[
    str, dict[str, str]
] = {}  # this example keeps nothing of its own: the daemon keeps the task records
USE_TZ = True
