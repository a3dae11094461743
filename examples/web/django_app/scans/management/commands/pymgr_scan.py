"""``python manage.py pymgr_scan N``: start scan N (or find the one running) and print its progress to the end.

The same key as the web page: a scan the page started is watched, not
started twice. Exit status 0 when the run succeeded, 1 otherwise.

A command runs where no one waits on a page (a terminal, cron, a deploy
script), so its client retries what did not reach the daemon or was refused
for now (a 429, a 503 while the daemon restarts), within bounds: ``Retry``.
The web views do not (docs/web-apps.md says why).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from pymgr.client import Client, Retry, TaskRecord
from pymgr.errors import PymgrError

#: At most 5 tries, waiting 0.5 s, 1 s, 2 s, 4 s between them (or what Retry-After says, up to 10 s).
RETRY = Retry(attempts=5, backoff_s=0.5, max_backoff_s=10)


class Command(BaseCommand):
    help = "Start scan N through pymgr (idempotent: key scan:N) and print its progress until it ends."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("task_id", type=int, help="the scan's number")
        parser.add_argument("--duration", type=float, default=10, help="seconds the scan runs (default 10)")
        parser.add_argument("--quiet", action="store_true", help="print no progress, only the end")
        parser.add_argument("--timeout", type=float, help="with --quiet: give up after this many seconds")

    def handle(
        self, *args: Any, task_id: int, duration: float, quiet: bool, timeout: float | None, **options: Any
    ) -> None:
        try:
            with Client(retry=RETRY) as client:
                params = {"task_id": task_id, "duration": duration}
                run = client.start_task("scan", params, key=f"scan:{task_id}")
                self.stdout.write(f"run {run.id} ({run.key}): {run.state}")
                # wait() watches the run's events for its end and returns the final record.
                run = client.wait(run.id, timeout_s=timeout) if quiet else self.follow(client, run)
        except PymgrError as exc:  # ConnectionFailed and WaitTimeout included: their messages say what to do
            raise CommandError(f"pymgr: {exc.message}") from exc
        self.stdout.write(f"run {run.id}: {run.state}")
        if run.state != "succeeded":
            raise CommandError(f"run {run.id} ended {run.state} (exit code {run.exit_code})")

    def follow(self, client: Client, run: TaskRecord) -> TaskRecord:
        """Print the run's progress until it ends; its final record."""
        # The stream opens with the run's current state, so even a run that
        # ended before we subscribed is reported, and ends the loop.
        for event in client.events(task=run.id):
            if (record := event.record()) is not None and record.is_final:
                return record
            if (update := event.progress()) is not None:
                self.stdout.write(f"run {run.id}: {update.progress:.0f} % {update.progress_message or ''}")
        raise CommandError(f"run {run.id}: the daemon's event stream ended before the run did")
