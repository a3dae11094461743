"""``python manage.py pymgr_scan N``: start scan N (or find the one running) and print its progress to the end.

The same client and the same key as the web page: a scan the page started is
watched, not started twice. Exit status 0 when the run succeeded, 1 otherwise.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pymgr.errors import PymgrError
from scans.client import progress_view, pymgr, task_view


class Command(BaseCommand):
    help = "Start scan N through pymgr (idempotent: key scan:N) and print its progress until it ends."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("task_id", type=int, help="the scan's number")
        parser.add_argument("--duration", type=float, default=10, help="seconds the scan runs (default 10)")

    def handle(self, *args: Any, task_id: int, duration: float, **options: Any) -> None:
        try:
            run = task_view(
                pymgr().start_task("scan", {"task_id": task_id, "duration": duration}, key=f"scan:{task_id}")
            )
            self.stdout.write(f"run {run['id']} ({run['key']}): {run['state']}")
            # The stream opens with the run's current state, so even a run that
            # ended before we subscribed is reported, and ends the loop.
            for event in pymgr().events(task=run["id"]):
                view = progress_view(event)
                if view is not None and "state" in view:
                    run = view
                    self.stdout.write(f"run {run['id']}: {run['state']}")
                    if run["ended"]:
                        break
                elif view is not None:
                    self.stdout.write(f"run {run['id']}: {view['progress']:.0f} % {view['message'] or ''}")
        except PymgrError as exc:  # ConnectionFailed included: its message says what to check
            raise CommandError(f"pymgr: {exc.message}") from exc
        if run["state"] != "succeeded":
            raise CommandError(f"run {run['id']} ended {run['state']} (exit code {run['exit_code']})")
