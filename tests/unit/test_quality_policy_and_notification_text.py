"""The pure rules behind items 5 and 6 of issue 21: which quality checks fail an analysis
under `quality: block`, what imagedb's `status.checks` holds, the notification's text for
people (escaped for Slack, bounded), the notification URLs a setting accepts and how
they are shown."""

from __future__ import annotations

import datetime as dt

import pytest

from cpp_dagster.analysis import notify, quality
from cpp_dagster.analysis.planning import PlanningError, SubAnalysisOptions
from cpp_dagster.features.checks import CheckOutcome
from cpp_dagster.imagedb.notifications import PendingNotification
from cpp_dagster.setting_rules import SettingsError, http_url, redact_endpoint
from cpp_dagster.settings import Settings

FOUND = {
    "image_rows_match_plan": CheckOutcome(False, "ERROR", "3 image rows for 4 planned image sets"),
    "all_batches_present": CheckOutcome(True, "ERROR", "all 2 batches have image rows"),
    "well_cell_counts": CheckOutcome(False, "WARN", "1 of 2 wells flagged"),
}


def test_only_a_failed_error_check_blocks_and_only_under_quality_block():
    message = quality.blocking_message(FOUND, "block")
    assert message.startswith("quality check image_rows_match_plan failed: 3 image rows for 4 planned image sets")
    assert "well_cell_counts" not in message  # a WARN check never blocks
    assert quality.blocking_message(FOUND, "warn") is None
    only_warnings = {k: v for k, v in FOUND.items() if v.severity == "WARN"}
    assert quality.blocking_message(only_warnings, "block") is None


def test_imagedb_gets_every_check_with_name_severity_passed_and_message():
    assert quality.status_entries(FOUND)[0] == {
        "name": "image_rows_match_plan",
        "severity": "ERROR",
        "passed": False,
        "message": "3 image rows for 4 planned image sets",
    }
    assert [e["name"] for e in quality.status_entries(FOUND)] == list(FOUND)


@pytest.mark.parametrize("value", ["stop", True, "BLOCK", 1, ["block"]])
def test_a_quality_that_is_not_warn_or_block_is_refused_before_launch(value):
    with pytest.raises(PlanningError, match="'quality' must be one of warn, block"):
        SubAnalysisOptions.from_meta({"pipeline_file": "a.cppipe", "quality": value})
    assert SubAnalysisOptions.from_meta({"pipeline_file": "a.cppipe"}).quality == "warn"
    assert SubAnalysisOptions.from_meta({"pipeline_file": "a.cppipe", "quality": "block"}).quality == "block"


def pending(**values) -> PendingNotification:
    base = dict(
        id=7,
        analysis_id=3,
        state="failed",
        outcome_at=dt.datetime(2026, 12, 8, 0, 41, 7),
        message="sub-analysis 5 failed: boom",
        attempts=1,
        sent_to=(),
        plate_acquisition_id=12,
        plate_barcode="P-1",
        pipeline_name="demo-cellpainting",
        job_folder=None,
    )
    return PendingNotification(**{**base, **values})


def test_the_message_is_the_documented_json_with_a_line_for_people():
    message = notify.message_of(pending(job_folder="results/P 1/12/3"), "https://files.lab/{path}")
    assert message == {
        "notification_id": 7,
        "analysis_id": 3,
        "state": "failed",
        "plate_barcode": "P-1",
        "plate_acquisition_id": 12,
        "pipeline": "demo-cellpainting",
        "message": "sub-analysis 5 failed: boom",
        "result_folder": "results/P 1/12/3",
        "result_url": "https://files.lab/results/P%201/12/3",
        "outcome_at": "2026-12-08T00:41:07",
        "text": "Analysis 3 (demo-cellpainting) of plate P-1 failed: sub-analysis 5 failed: boom "
        "Results: https://files.lab/results/P%201/12/3",
    }


def test_slack_gets_no_mention_or_link_from_a_value_and_a_bounded_line():
    hostile = pending(plate_barcode="<!here>", message="<@U123> & " + "x" * 10_000)
    body = notify.Destination("slack", "https://hooks.slack.com/services/T/B/X").body(notify.message_of(hostile, None))
    assert list(body) == ["text"]
    assert "<" not in body["text"] and ">" not in body["text"]
    assert "&lt;!here&gt;" in body["text"] and "&lt;@U123&gt; &amp; " in body["text"]
    assert len(notify.text_of(hostile, None)) == notify.MAX_TEXT == len(body["text"])
    assert notify.slack_text("&" * 5000).endswith("&amp;…")  # an escape is never cut in half


@pytest.mark.parametrize(
    "raw",
    [
        "file:///etc/passwd",
        "ftp://host/x",
        "https://",
        "http://host/a b",
        "http://host/a\r\nX-Injected: 1",
        "http://host:99999/",
        "http://host:port/",
        "https://hööks.lab/",
        "hooks.lab/cpp",
    ],
)
def test_a_notification_url_must_be_plain_http_or_https(raw):
    with pytest.raises(ValueError):
        http_url(raw)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"CPP_NOTIFY_WEBHOOK_URL": raw})
    assert refused.value.args[0].startswith("CPP_NOTIFY_WEBHOOK_URL=***: ")  # the value is not echoed


def test_a_notification_url_is_shown_as_scheme_host_and_port_only():
    url = "https://lab:pw@hooks.slack.com:8443/services/T0/B0/SECRET?token=abc"
    assert redact_endpoint(url) == "https://hooks.slack.com:8443/***"
    shown = repr(Settings.from_env({"CPP_NOTIFY_SLACK_URL": url}).notify)
    assert "SECRET" not in shown and "pw" not in shown and "abc" not in shown
    assert notify.scrub(f"failed for {url} (/services/T0/B0/SECRET)", url).count("SECRET") == 0
