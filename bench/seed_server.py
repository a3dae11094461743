"""The seed baseline: the 2014 design's server, rebuilt from DESIGN.md's legacy protocol section.

    python bench/seed_server.py --host 127.0.0.1 --port 0 --secret SECRET

What it does, as that design did: a gevent ``StreamServer``; per connection,
the request's ``key:value`` lines are read with the standard library's
header parser (``http.client.parse_headers``, which is ``email.parser``);
keys are lower-cased and values stripped; the ``signature`` must be the hex
HMAC-MD5 of the module name under the shared secret; the ``module`` header
picks a registered module class, whose ``do_<action>`` method gets the other
keys; the reply is ``json.dumps({"success": ..., "msg": ...})``; then the
connection is closed. One request per connection.

It is a baseline, not a product: it answers the bench's ``demo.echo`` the
way pymgr's legacy listener does, with the same error codes for a bad
signature (3) or an unknown action (1), and nothing more.
Prints ``listening PORT`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import sys
from typing import Any

try:
    from gevent.server import StreamServer
except ModuleNotFoundError:  # pragma: no cover - the test venv; the handler below needs no gevent
    StreamServer = None

#: The 2014 design's error codes (DESIGN.md, "The legacy protocol").
ERR_NO_ACTION = 1
ERR_ACTION_RAISED = 2
ERR_NOT_AUTHENTICATED = 3


class DemoModule:
    """The seed's module class: ``do_<action>`` methods take the request's other keys."""

    def do_echo(self, params: dict[str, str]) -> dict[str, str]:
        return params


MODULES: dict[str, type[Any]] = {"demo": DemoModule}


def answer(secret: bytes, fields: dict[str, str]) -> dict[str, Any]:
    """The reply object for one parsed request."""
    module = fields.pop("module", "")
    action = fields.pop("action", "")
    signature = fields.pop("signature", "")
    expected = hmac.new(secret, module.encode(), hashlib.md5).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()) or not action:
        return {"success": False, "msg": {"err_code": ERR_NOT_AUTHENTICATED}}
    cls = MODULES.get(module)
    method = getattr(cls(), f"do_{action}", None) if cls is not None else None
    if method is None:
        return {"success": False, "msg": {"err_code": ERR_NO_ACTION}}
    try:
        return {"success": True, "msg": method(fields)}
    except Exception:  # the seed reported any action error as err_code 2
        return {"success": False, "msg": {"err_code": ERR_ACTION_RAISED}}


def make_handler(secret: bytes) -> Any:
    def handle(sock: Any, address: Any) -> None:
        rfile = sock.makefile("rb")
        try:
            headers = http.client.parse_headers(rfile)
            fields = {key.strip().lower(): value.strip() for key, value in headers.items()}
            sock.sendall(json.dumps(answer(secret, fields)).encode())
        finally:
            rfile.close()
            sock.close()

    return handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args(argv)
    if StreamServer is None:
        parser.error(
            "the seed baseline runs on gevent: pip install gevent (make bench installs it in .venv-bench)"
        )
    server = StreamServer((args.host, args.port), make_handler(args.secret.encode()))
    server.start()
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
