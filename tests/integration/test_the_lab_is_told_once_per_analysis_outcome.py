"""Telling the lab: each analysis outcome (finished, failed, cancelled) reaches the
webhook and Slack once, through the real `notify_lab` sensor, real imagedb (its outbox)
and a real HTTP receiver on 127.0.0.1; a receiver that was down gets it later; one that
hangs or trickles bytes is hung up on after the timeout; the URL's secrets never show."""

from __future__ import annotations

import base64
import logging
import threading
import time

import pytest
from dagster_helpers import tick
from http_receiver import Receiver, free_port

from cpp_dagster.demo.register import DEMO_CHANNEL_MAP, DEMO_ICF_PIPELINE, DEMO_PIPELINE
from cpp_dagster.settings import current_values, load_settings

SENSOR = "notify_lab"


@pytest.fixture
def receiver(monkeypatch):
    found = Receiver(free_port()).start()
    monkeypatch.setenv("CPP_NOTIFY_WEBHOOK_URL", found.url())
    monkeypatch.setenv("CPP_NOTIFY_RETRY_DELAY_S", "0")  # due again at once: the next tick retries
    yield found
    found.stop()


def submitted(lab, barcode: str, pipeline: str = DEMO_PIPELINE):
    acq = lab.db.add_plate_acquisition(barcode, channel_map_id=DEMO_CHANNEL_MAP, folder=f"/nas/images/{barcode}")
    return acq, lab.db.submit_analysis(acq, pipeline)


def finish(lab, acq, analysis) -> None:
    for sub_id in analysis.sub_ids:
        assert lab.db.mark_sub_started(sub_id, batches=1, image_sets=1)
        folder = f"results/{lab.db.plate_acquisition(acq).plate_barcode}/{acq}/{analysis.analysis_id}"
        assert lab.db.mark_sub_finished(sub_id, {"job_folder": folder, "file_list": []})


def test_each_analysis_outcome_is_told_once_not_once_per_run_or_report(lab, dagster_instance, receiver, monkeypatch):
    monkeypatch.setenv("CPP_RESULTS_URL_TEMPLATE", "https://files.lab/{path}")
    acq_a, a = submitted(lab, "NOTIFY-A")
    finish(lab, acq_a, a)
    folder = f"results/NOTIFY-A/{acq_a}/{a.analysis_id}"
    assert lab.db.mark_sub_finished(a.sub_ids[0], {"job_folder": folder, "file_list": []})  # completed again
    acq_b, b = submitted(lab, "NOTIFY-B", DEMO_ICF_PIPELINE)  # two sub-analyses: the second depends on the first
    icf, features = b.sub_ids
    assert lab.db.mark_sub_started(icf, batches=1, image_sets=1)
    assert lab.db.mark_sub_failed(icf, "step x failed: CellProfiler exited with code 1")
    assert not lab.db.mark_sub_failed(icf, "the run-status sensor sees the same failure")  # a second report
    _, c = submitted(lab, "NOTIFY-C")
    assert lab.db.mark_sub_failed(c.sub_ids[0], "cancelled: run 1234 was cancelled in Dagster")

    for _ in range(3):
        tick(dagster_instance, SENSOR)
    bodies = sorted(receiver.bodies(), key=lambda body: body["analysis_id"])
    assert [(m["analysis_id"], m["state"]) for m in bodies] == [
        (a.analysis_id, "finished"),
        (b.analysis_id, "failed"),
        (c.analysis_id, "cancelled"),
    ]
    told = bodies[0]
    assert told["plate_barcode"] == "NOTIFY-A" and told["plate_acquisition_id"] == acq_a
    assert told["pipeline"] == DEMO_PIPELINE and told["message"] == "finished (1 sub-analysis)"
    assert told["result_folder"] == f"results/NOTIFY-A/{acq_a}/{a.analysis_id}"
    assert told["result_url"] == f"https://files.lab/{told['result_folder']}"
    assert told["text"].startswith(f"Analysis {a.analysis_id} ({DEMO_PIPELINE}) of plate NOTIFY-A finished")
    assert bodies[1]["message"] == f"sub-analysis {icf} failed: step x failed: CellProfiler exited with code 1"
    assert bodies[1]["result_folder"] is None and bodies[1]["result_url"] is None
    assert {r.headers["Idempotency-Key"] for r in receiver.received} == {
        f"cpp-dagster-notification-{m['notification_id']}" for m in bodies
    }

    # A re-run that finishes is a new outcome of the same analysis: told once more.
    assert lab.db.sub_analysis(features).error is not None  # failed with its dependency
    lab.db.rerun_sub_analysis(icf)
    finish(lab, acq_b, b)
    tick(dagster_instance, SENSOR)
    tick(dagster_instance, SENSOR)
    states = [m["state"] for m in receiver.bodies() if m["analysis_id"] == b.analysis_id]
    assert states == ["failed", "finished"]
    assert len(receiver.received) == 4


def test_an_outcome_reaches_a_receiver_that_was_down_on_a_later_tick(lab, dagster_instance, receiver):
    receiver.stop()  # down: nothing listens on its port
    acq, a = submitted(lab, "NOTIFY-DOWN")
    finish(lab, acq, a)
    assert tick(dagster_instance, SENSOR).skip_message == "0 outcome(s) sent, 1 to be tried again"
    [waiting] = lab.db.notifications_of(a.analysis_id)
    assert waiting.done is None and waiting.attempts == 1 and waiting.sent_to == ()
    assert waiting.last_error == f"webhook (http://127.0.0.1:{receiver.port}/***): connection refused"

    receiver.start()  # back on the same port
    tick(dagster_instance, SENSOR)
    tick(dagster_instance, SENSOR)
    assert [m["analysis_id"] for m in receiver.bodies()] == [a.analysis_id]
    [told] = lab.db.notifications_of(a.analysis_id)
    assert told.done is not None and told.attempts == 2 and told.sent_to == ("webhook",) and told.last_error is None


@pytest.mark.parametrize("answer", ["hang", "trickle"])
def test_a_hanging_receiver_costs_a_tick_one_timeout(lab, dagster_instance, receiver, monkeypatch, answer):
    monkeypatch.setenv("CPP_NOTIFY_TIMEOUT_S", "1")
    started = time.monotonic()
    tick(dagster_instance, SENSOR)  # nothing to send: what a tick costs here (loading the definitions)
    baseline = time.monotonic() - started
    analyses = []
    for n in range(5):
        acq, a = submitted(lab, f"NOTIFY-SLOW-{n}")
        finish(lab, acq, a)
        analyses.append(a)
    receiver.answer = answer
    started = time.monotonic()
    result = tick(dagster_instance, SENSOR)
    elapsed = time.monotonic() - started
    # one POST hung up on after 1 s, the webhook not tried again in this tick (the five
    # outcomes would take 5 s, the receiver's answer 60 s or 17 s)
    assert elapsed < baseline + 2.5, f"the tick took {elapsed:.1f} s, one with nothing to send {baseline:.1f} s"
    assert "to be tried again" in result.skip_message
    errors = [r.last_error for a in analyses for r in lab.db.notifications_of(a.analysis_id) if r.last_error]
    assert "webhook (http://127.0.0.1:" in errors[0] and errors[0].endswith("no answer within 1 s")
    receiver.released.set()
    receiver.answer = 200
    for _ in range(4):
        tick(dagster_instance, SENSOR)
    assert sorted(m["analysis_id"] for m in receiver.bodies()) == sorted(a.analysis_id for a in analyses)


def test_the_urls_secrets_never_appear_in_a_log_line_imagedb_or_the_message(
    lab, dagster_instance, receiver, monkeypatch, caplog, capsys
):
    secret_url = receiver.url("/hook/t0ken-in-path?key=qu3ry-secret", userinfo="lab:s3cret%40pw")
    monkeypatch.setenv("CPP_NOTIFY_WEBHOOK_URL", secret_url)
    acq, a = submitted(lab, "NOTIFY-SECRET")
    finish(lab, acq, a)
    receiver.answer = 500  # refused first: the error is recorded and logged
    caplog.set_level(logging.DEBUG)
    tick(dagster_instance, SENSOR)
    receiver.answer = 200
    tick(dagster_instance, SENSOR)

    [first, second] = receiver.received
    assert first.path == second.path == "/hook/t0ken-in-path?key=qu3ry-secret"
    assert base64.b64decode(second.headers["Authorization"].split()[1]) == b"lab:s3cret@pw"  # basic auth
    [row] = lab.db.notifications_of(a.analysis_id)
    assert row.done is not None and row.attempts == 2
    shown = "\n".join(
        [
            caplog.text,
            *capsys.readouterr(),
            *current_values(load_settings()),
            str(load_settings()),
            str(second.body),
            str(lab.db.notifications_of(a.analysis_id)),
        ]
    )
    assert f"CPP_NOTIFY_WEBHOOK_URL=http://127.0.0.1:{receiver.port}/***" in shown
    assert "answered HTTP 500" in caplog.text
    for secret in ("s3cret", "t0ken-in-path", "qu3ry-secret"):
        assert secret not in shown


def test_slack_gets_one_escaped_line_and_a_retry_goes_only_where_it_failed(
    lab, dagster_instance, receiver, monkeypatch
):
    monkeypatch.setenv("CPP_NOTIFY_SLACK_URL", receiver.url("/slack"))
    monkeypatch.setenv("CPP_NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/down")
    _, a = submitted(lab, "<!channel> & <https://evil.example|click>")
    assert lab.db.mark_sub_failed(a.sub_ids[0], "x" * 100_000)  # a huge failure message
    tick(dagster_instance, SENSOR)
    [row] = lab.db.notifications_of(a.analysis_id)
    assert row.sent_to == ("slack",) and row.done is None and "connection refused" in row.last_error
    monkeypatch.setenv("CPP_NOTIFY_WEBHOOK_URL", receiver.url())
    tick(dagster_instance, SENSOR)
    [slack] = receiver.bodies("/slack")  # Slack was not sent it again
    assert list(slack) == ["text"]
    assert slack["text"].startswith(
        f"Analysis {a.analysis_id} ({DEMO_PIPELINE}) of plate &lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; "
    )
    assert "<" not in slack["text"] and len(slack["text"]) <= 3000
    [webhook] = receiver.bodies()
    assert webhook["plate_barcode"] == "<!channel> & <https://evil.example|click>"
    assert len(webhook["message"]) <= 4000


@pytest.mark.parametrize("answer", [302, 307, 404])
def test_a_redirect_or_an_error_answer_is_not_followed_and_is_tried_again_later(
    lab, dagster_instance, receiver, answer
):
    acq, a = submitted(lab, "NOTIFY-REDIRECT")
    finish(lab, acq, a)
    receiver.answer = answer
    tick(dagster_instance, SENSOR)
    assert [r.path for r in receiver.received] == ["/hook"]  # never /elsewhere
    [row] = lab.db.notifications_of(a.analysis_id)
    assert row.done is None and row.last_error.endswith(f"answered HTTP {answer}")


def test_two_drains_at_once_never_claim_the_same_outcome(lab):
    acq, a = submitted(lab, "NOTIFY-RACE")
    finish(lab, acq, a)
    from cpp_dagster.imagedb.store import ImageDB

    claimed, barrier = [], threading.Barrier(4)

    def claim():
        db = ImageDB(lab.db.url)
        barrier.wait()
        claimed.append(db.claim_notification(["webhook"], lease_s=60, give_up_after_s=3600))
        db.close()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c.analysis_id for c in claimed if c is not None] == [a.analysis_id]


def test_outcomes_while_no_destination_is_set_are_closed_unsent(lab, dagster_instance, receiver, monkeypatch):
    monkeypatch.delenv("CPP_NOTIFY_WEBHOOK_URL")
    acq, a = submitted(lab, "NOTIFY-NOBODY")
    finish(lab, acq, a)
    assert "no destination was configured" in tick(dagster_instance, SENSOR).skip_message
    monkeypatch.setenv("CPP_NOTIFY_WEBHOOK_URL", receiver.url())
    tick(dagster_instance, SENSOR)
    assert receiver.received == []
    [row] = lab.db.notifications_of(a.analysis_id)
    assert row.done is not None and row.sent_to == () and row.last_error.startswith("not sent")
