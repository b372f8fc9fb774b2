"""The UI's lab overview summary: every line counted by state, only failed and waiting
lines listed (failed first), at most ATTENTION_ROWS of them, the rest counted and pointed
at `cpp-dagster status`."""

from __future__ import annotations

from cpp_dagster.analysis.lab_overview import OverviewLine, attention_markdown, attention_summary


def line(barcode: str, state: str, detail: str = "") -> OverviewLine:
    return OverviewLine(barcode, barcode, 1, "pipe", 1, 1, "1/1 features", state, detail, "", "")


def test_failed_lines_come_first_then_waiting_and_nothing_else_is_listed():
    lines = [
        line("W1", "waiting", "acquisition not finished"),
        line("F1", "failed", "exit code 1"),
        line("R1", "running", "3 / 8 batches finished"),
        line("D1", "finished"),
        line("N1", "not run"),
        line("F2", "failed", "out of disk"),
    ]
    summary = attention_summary(lines)
    assert [s.plate for s in summary.shown] == ["F1", "F2", "W1"] and summary.left_out == 0
    assert summary.counts == {"not run": 1, "waiting": 1, "running": 1, "finished": 1, "failed": 2}
    text = attention_markdown(summary)
    assert "**6 lines**" in text and "| F1 |" in text and "| R1 |" not in text and "more lines" not in text


def test_past_the_cap_the_rest_is_counted_and_pointed_at_the_command():
    summary = attention_summary([line(f"F{i}", "failed", "x") for i in range(7)], rows=3)
    assert len(summary.shown) == 3 and summary.left_out == 4
    assert "4 more lines need attention" in attention_markdown(summary)
    assert "`cpp-dagster status`" in attention_markdown(summary)


def test_a_quiet_lab_says_nothing_needs_attention():
    text = attention_markdown(attention_summary([line("D1", "finished")]))
    assert "Nothing needs attention" in text and "| plate |" not in text
