"""Telling the lab: each analysis outcome (finished, failed, cancelled) goes, once, to the
destinations configured (`CPP_NOTIFY_WEBHOOK_URL`: the JSON below; `CPP_NOTIFY_SLACK_URL`:
a Slack incoming webhook, `{"text": ...}`), from imagedb's outbox (imagedb/notifications.py),
drained by the `notify_lab` sensor (defs/analysis/notify.py), never by the run: a receiver
that is down, slow or wrong never holds an analysis up, and gets the outcome on a later
tick.

The JSON POSTed to the webhook (`Content-Type: application/json`, header
`Idempotency-Key: cpp-dagster-notification-<notification_id>`):

    {"notification_id": 17, "analysis_id": 3, "state": "finished" | "failed" | "cancelled",
     "plate_barcode": "P0001", "plate_acquisition_id": 12, "pipeline": "demo-cellpainting",
     "message": "finished (1 sub-analysis)" | "sub-analysis 5 failed: step ... failed: ...",
     "result_folder": "results/P0001/12/3" | null, "result_url": "https://files.lab/..." | null,
     "outcome_at": "2026-12-08T00:41:07", "text": "one line for people"}

Bounded: one POST takes at most `CPP_NOTIFY_TIMEOUT_S` from connecting to the answer's
status line (a receiver that trickles bytes is hung up on), redirects are not followed,
the answer's body is not read, a destination that failed is not tried again in the same
tick, and no new outcome is started after TICK_BUDGET_S, so a tick stays under Dagster's
sensor timeout. The URLs never appear in a log line, message or imagedb: a destination is
named and shown as `scheme://host:port/***`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from cpp_dagster.analysis.lab_overview import result_url
from cpp_dagster.imagedb.notifications import PendingNotification
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.setting_rules import redact_endpoint, redact_url
from cpp_dagster.settings import Settings

GIVE_UP_AFTER_S = 3 * 24 * 3600  # an outcome not delivered within 3 days is no longer tried
MAX_RETRY_DELAY_S = 3600
TICK_BUDGET_S = 10  # no new outcome is started after this long in one tick
MAX_TEXT = 3000  # characters of the line for people (Slack shows up to 4000 in one message)
log = logging.getLogger("cpp_dagster.notify")
NO_DESTINATION = "not sent: no destination was configured (CPP_NOTIFY_WEBHOOK_URL, CPP_NOTIFY_SLACK_URL)"


class DeliveryError(Exception):
    """A destination did not take the message; the text names no secret."""


@dataclass(frozen=True)
class Destination:
    name: str  # "webhook" or "slack": what imagedb records in `sent_to`
    url: str

    @property
    def shown(self) -> str:
        return redact_endpoint(self.url)

    def body(self, message: dict) -> dict:
        return {"text": slack_text(message["text"])} if self.name == "slack" else message


def message_of(n: PendingNotification, results_url_template: str | None) -> dict:
    """The documented JSON of one outcome."""
    url = result_url(n.job_folder or "", results_url_template) or None
    return {
        "notification_id": n.id,
        "analysis_id": n.analysis_id,
        "state": n.state,
        "plate_barcode": n.plate_barcode,
        "plate_acquisition_id": n.plate_acquisition_id,
        "pipeline": n.pipeline_name,
        "message": n.message,
        "result_folder": n.job_folder,
        "result_url": url,
        "outcome_at": n.outcome_at.isoformat(timespec="seconds"),
        "text": text_of(n, url),
    }


def text_of(n: PendingNotification, url: str | None) -> str:
    where = f" Results: {url or n.job_folder}" if (url or n.job_folder) else ""
    text = (
        f"Analysis {n.analysis_id} ({n.pipeline_name or 'no pipeline'}) of plate {n.plate_barcode or '?'} "
        f"{n.state}: {n.message}{where}"
    )
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


_SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def slack_text(text: str) -> str:
    """Slack reads `<...>` as links and mentions (`<!channel>` would ping everyone): the
    three characters it asks to escape, escaped, in at most MAX_TEXT characters (never
    cutting an escape in half)."""
    out, length = [], 0
    for char in text:
        piece = _SLACK_ESCAPES.get(char, char)
        if length + len(piece) > MAX_TEXT - 1:
            return "".join(out) + "…"
        out.append(piece)
        length += len(piece)
    return "".join(out)


def post_json(url: str, body: dict, *, timeout_s: float, key: str) -> None:
    """POST `body` as JSON; DeliveryError unless a 2xx status arrives within `timeout_s`
    (the whole exchange: name lookup, connection, request, status line). `user:password@`
    in the URL becomes HTTP basic auth."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "cpp-dagster", "Idempotency-Key": key}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection_type(parts.hostname, parts.port, timeout=timeout_s)
    data = json.dumps(body, ensure_ascii=False).encode()
    answer: dict = {}
    given_up = threading.Event()

    def exchange() -> None:
        try:
            conn.connect()
            if given_up.is_set():  # a name lookup or connection that outlasted the timeout sends nothing
                return
            conn.request("POST", target, body=data, headers=headers)
            answer["status"] = conn.getresponse().status  # its body is not read
        except Exception as error:  # reported by the caller's thread
            answer["error"] = error

    worker = threading.Thread(target=exchange, name="cpp-notify-post", daemon=True)
    worker.start()
    worker.join(timeout_s)
    timed_out = worker.is_alive()
    given_up.set()
    _hang_up(conn)
    error = answer.get("error")
    if timed_out or isinstance(error, TimeoutError) or (error is None and "status" not in answer):
        raise DeliveryError(f"no answer within {timeout_s:g} s")
    if error is not None:
        raise DeliveryError(_reason(error, url))
    if not 200 <= answer["status"] < 300:
        raise DeliveryError(f"answered HTTP {answer['status']}")


def _hang_up(conn: http.client.HTTPConnection) -> None:
    """Close the connection, also under a thread still reading from it (which then ends)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the other side
            sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def _reason(error: Exception, url: str) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "host not found"
    if isinstance(error, ssl.SSLError):
        text = f"TLS failed ({error.reason or error})"
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = f"{type(error).__name__}: {error}"
    return scrub(text, url)


def scrub(text: str, url: str) -> str:
    """`text` without any part of `url` that may be secret (user, password, path, query)."""
    parts = urlsplit(url)
    for secret in sorted(
        {p for p in (parts.username, parts.password, parts.path, parts.query) if p and len(p) > 1},
        key=len,
        reverse=True,
    ):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return redact_url(text)


@dataclass
class DrainReport:
    sent: list[str] = field(default_factory=list)  # one line per outcome every destination got
    waiting: list[str] = field(default_factory=list)  # one line per outcome to be tried again
    closed: int = 0  # outcomes closed unsent: no destination configured

    def summary(self) -> str:
        if self.closed:
            return f"{NO_DESTINATION}; {self.closed} outcome(s) closed unsent"
        if not self.sent and not self.waiting:
            return "no analysis outcome to tell the lab"
        return f"{len(self.sent)} outcome(s) sent, {len(self.waiting)} to be tried again"


def drain(
    db: ImageDB, settings: Settings, *, budget_s: float = TICK_BUDGET_S, clock: Callable[[], float] = time.monotonic
) -> DrainReport:
    """Send the due outcomes, one claimed at a time, until none is due, every destination
    has failed once in this call, or `budget_s` has passed (the outcome in hand is finished)."""
    notify, report = settings.notify, DrainReport()
    destinations = [Destination(name, url) for name, url in notify.destinations]
    if not destinations:
        report.closed = db.close_notifications_unsent(NO_DESTINATION)
        return report
    names = [d.name for d in destinations]
    down: set[str] = set()
    lease_s = 60 + 2 * notify.timeout_s * len(destinations)
    started = clock()
    while clock() - started < budget_s:
        usable = [name for name in names if name not in down]
        pending = db.claim_notification(usable, lease_s=lease_s, give_up_after_s=GIVE_UP_AFTER_S)
        if pending is None:
            break
        message = message_of(pending, settings.results_url_template)
        errors = []
        for d in destinations:
            if d.name in pending.sent_to:
                continue
            if d.name in down:
                errors.append(f"{d.name}: not tried (it failed earlier in the same tick)")
                continue
            try:
                post_json(
                    d.url, d.body(message), timeout_s=notify.timeout_s, key=f"cpp-dagster-notification-{pending.id}"
                )
            except DeliveryError as error:
                down.add(d.name)
                errors.append(f"{d.name} ({d.shown}): {error}")
                continue
            db.record_delivery(pending.id, d.name)
        retry_in = min(notify.retry_delay_s * 2 ** max(pending.attempts - 1, 0), MAX_RETRY_DELAY_S)
        error = "; ".join(errors) or None
        what = f"analysis {pending.analysis_id} {pending.state} (notification {pending.id}, attempt {pending.attempts})"
        if db.end_attempt(pending.id, names, error=error, retry_in_s=retry_in):
            report.sent.append(f"{what}: sent")
            log.info(report.sent[-1])
        else:
            report.waiting.append(f"{what}: {error}; tried again in {retry_in:g} s")
            log.warning(report.waiting[-1])
    return report
