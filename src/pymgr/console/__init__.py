"""The web console (``pymgr console``): admin pages that hand privileged work to the daemon.

A separate, unprivileged process (``pymgr[console]``): Starlette, Jinja2 templates and
htmx (shipped in ``static/``), served by uvicorn. It talks to the daemon only through
``pymgr.client.AsyncClient`` on the Unix socket, and acts for the person signed in
(``acting_for``: the daemon's delegation), never with its own rights.

Its parts, one concept a file:
- ``config``: the ``[console]`` settings; ``users``: the users file (argon2id);
  ``sessions``: server-side sessions with idle and absolute timeouts;
  ``throttle``: login attempts limited per user and per address;
  ``websec``: security headers, CSRF and origin checks;
  ``hub``: the one event subscription to the daemon, fanned out to browsers;
  ``forms``: a form from a JSON Schema, and its values read back;
  ``app`` (the Starlette app), ``auth_routes``, ``pages``, ``streams`` (the routes);
  ``run``: drop root and serve.
"""
