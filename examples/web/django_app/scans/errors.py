"""pymgr's errors as the HTTP answers a browser should get, for every view.

403, 404 and 409 pass through; 429 keeps its ``Retry-After``; a daemon that
cannot be reached is 503 with a message for people (the socket path goes to
the server's log only); any other daemon error is this back end's problem: 502.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape

from pymgr.client import ConnectionFailed
from pymgr.errors import PymgrError, RateLimited

log = logging.getLogger(__name__)

#: The daemon's error statuses a browser gets as they are (400: the browser's own mistake).
PASSED_ON = {400, 403, 404, 409, 429, 503}


def error_response(request: HttpRequest, exc: PymgrError) -> HttpResponse:
    if isinstance(exc, ConnectionFailed):
        status, message = 503, "the task service is not running; try again in a minute"
        log.error("pymgr: %s", exc)
    else:
        status = exc.http_status if exc.http_status in PASSED_ON else 502
        message = exc.message
    response: HttpResponse
    if "text/html" in request.headers.get("Accept", ""):
        html = f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{escape(message)}</p>"
        response = HttpResponse(html, status=status)
    else:
        response = JsonResponse({"error": exc.code, "message": message}, status=status)
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        response["Retry-After"] = str(exc.retry_after_s)
    return response


class PymgrErrorMiddleware:
    """Turns a ``PymgrError`` raised by a view into ``error_response``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        return error_response(request, exc) if isinstance(exc, PymgrError) else None
