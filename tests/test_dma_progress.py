"""The reporters ``ndmp`` chooses: what each writes where, and which log lines make exit 3."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from ndmpd.dma.progress import (BarReporter, JsonLinesReporter, NullReporter, PlainReporter, choose_reporter,
                                summary_line)

DONE = {"job": "backup", "id": "ab12cd34", "status": "done", "bytes": 3 << 20, "entries": 7, "drive": "vtape0",
        "file_number": 0, "seconds": 1.25, "warnings": []}


def test_choose_reporter_json_then_terminal_then_plain():
    assert isinstance(choose_reporter(True, True), JsonLinesReporter)
    assert isinstance(choose_reporter(False, True), BarReporter)
    assert type(choose_reporter(False, False)) is PlainReporter
    assert choose_reporter(False, True, interval=5).interval == 1.0, "a bar polls at least every second"
    assert choose_reporter(False, False).interval is None, "off a terminal nothing polls for progress"


def test_json_lines_one_object_a_line_with_its_type():
    out = io.StringIO()
    r = JsonLinesReporter(out)
    r.progress(10, 100)
    r.log("nas1", "warning", "a: vanished before it was read; not archived")
    r.warning("slow tape")
    r.summary(DONE)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["type"] for line in lines] == ["progress", "log", "warning", "summary"]
    assert lines[0]["bytes"] == 10 and lines[0]["total"] == 100 and lines[0]["eta"] is not None
    assert lines[1] == {"type": "log", "host": "nas1", "level": "warning",
                        "text": "a: vanished before it was read; not archived"}
    assert lines[3]["id"] == "ab12cd34" and len(r.warnings) == 2


def test_plain_lines_normal_on_stdout_errors_on_stderr_held_to_the_end():
    out, err = io.StringIO(), io.StringIO()
    r = PlainReporter(out, err)
    r.progress(1, 2)
    r.log("nas1", "normal", "backup started")
    r.log("nas1", "error", "cannot read x")
    r.log("nas1", "warning", "x changed while read")
    assert out.getvalue() == "ndmp: nas1 normal: backup started\n"
    assert err.getvalue() == "ndmp: nas1 warning: x changed while read\n"
    r.summary({**DONE, "warnings": ["nas1: cannot read x"]})
    assert err.getvalue().splitlines()[-1] == "ndmp: nas1 error: cannot read x"
    assert out.getvalue().splitlines()[-1] == \
        "backup ab12cd34 done: 3.0 MiB (3145728 bytes), 7 files, vtape0 file 0 in 1.2 s, 1 warning"
    assert r.warnings == ["nas1: cannot read x", "nas1: x changed while read"]


def test_a_failed_job_has_no_plain_summary_and_its_error_lines_are_in_its_reason():
    out, err = io.StringIO(), io.StringIO()
    r = PlainReporter(out, err)
    r.log("nas1", "error", "FILESYSTEM='/x' is not a configured volume")
    r.summary({**DONE, "status": "failed", "reason": "FILESYSTEM='/x' is not a configured volume (...)"})
    assert out.getvalue() == "" and err.getvalue() == ""


def test_null_reporter_still_counts_warnings_and_errors_not_normal_lines():
    r = NullReporter()
    r.log("h", "normal", "fine")
    r.log("h", "debug", "detail")
    r.log("h", "warning", "socket skipped")
    r.warning("mine")
    assert r.warnings == ["h: socket skipped", "mine"]


def test_summary_line_without_optional_fields():
    assert summary_line({"job": "copy", "id": "x", "status": "done"}) == "copy x done"


def test_summary_line_names_a_server_the_job_left_busy_and_not_an_idle_or_closed_one():
    busy = summary_line({**DONE, "states": {"data": "idle", "mover": "active"}})
    assert busy.endswith(", not idle: mover active"), busy
    assert "not idle" not in summary_line({**DONE, "states": {"source": "idle", "destination": "closed"}})


def test_state_names_are_the_lower_case_ndmp_names():
    from ndmpd.dma.jobs.states import state_name
    from ndmpd.wire import C
    assert state_name("data", C.DATA_STATE_IDLE) == "idle"
    assert state_name("data", C.DATA_STATE_ACTIVE) == "active"
    assert state_name("mover", C.MOVER_STATE_PAUSED) == "paused"


def test_help_lists_every_exit_status():
    shown = subprocess.run([sys.executable, "-m", "ndmpd.dma", "--help"], capture_output=True, text=True,
                           timeout=60).stdout
    for status in ("0    done", "1    the job failed", "2    usage", "3    finished with warnings", "130  interrupted"):
        assert status in shown, shown
