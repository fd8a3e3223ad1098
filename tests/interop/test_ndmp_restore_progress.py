"""What ``ndmp restore`` shows while it runs, the same as ``ndmp backup`` (real ndmpd
processes): ``--json`` progress lines and one summary per recover, the bar on a terminal and
nothing animated on a pipe, the servers' log lines with level and host, and exit 3 for a
restore that completed while a server logged a warning."""

from __future__ import annotations

import json

import pytest

from .conftest import servers
from .ndmp_cli import json_lines, ndmp, progress_then_summary
from .test_ndmp_progress import _run_on_pty, big_file

pytestmark = pytest.mark.interop


def _backup(spec: str, catalog, home, *more: str) -> dict:
    made = ndmp("backup", f"{spec}:/export/data", "--tape", f"{spec}:vtape0", "--catalog", str(catalog), "--json",
                *more, home=home)
    assert made.returncode in (0, 3), made.stderr
    return json_lines(made.stdout)[-1]


def test_restore_json_progress_grows_and_one_summary_ends_it_then_bar_and_plain(tmp_path):
    with servers(tmp_path, "nas") as [nas]:
        spec, catalog = f"ndmp@{nas.host}", tmp_path / "c.db"
        big_file(tmp_path / "nas" / "vol" / "big.bin", 192)
        made = _backup(spec, catalog, tmp_path)

        result = ndmp("restore", made["id"], "--to", f"{spec}:/export/out/j", "--catalog", str(catalog), "--json",
                      "--progress-interval", "0.05", home=tmp_path)
        assert result.returncode == 0, result.stderr
        progress, summary = progress_then_summary(result.stdout)
        assert all(p["total"] is not None and p["total"] >= p["bytes"] for p in progress), "a total to show"
        assert summary["job"] == "restore" and summary["status"] == "done" and summary["warnings"] == []
        assert summary["backup"] == made["id"] and summary["image_bytes"] == made["bytes"]
        assert summary["bytes_moved"] >= made["bytes"] and not summary["direct"]
        assert (tmp_path / "nas" / "out" / "j" / "big.bin").stat().st_size == 192 << 20

        status, shown = _run_on_pty(["restore", made["id"], "--to", f"{spec}:/export/out/t", "--catalog",
                                     str(catalog), "--progress-interval", "0.05"], tmp_path)
        assert status == 0, shown
        redraws = shown.replace(b"\r\n", b"\n")
        assert b"\r" in redraws and b"B/s" in redraws and b"%|" in redraws, shown     # tqdm's bar
        assert f"restore {made['id']} done: ".encode() in shown, shown

        piped = ndmp("restore", made["id"], "--to", f"{spec}:/export/out/p", "--catalog", str(catalog),
                     "--progress-interval", "0.05", home=tmp_path)
        assert piped.returncode == 0, piped.stderr
        assert "\r" not in piped.stdout + piped.stderr and "B/s" not in piped.stderr
        [line] = piped.stdout.splitlines()
        assert line.startswith(f"restore {made['id']} done: ") and "-byte image into /export/out/p" in line


def test_a_restore_the_server_warns_about_is_kept_shown_with_level_and_host_and_exits_3(tmp_path):
    """The level 1 no longer holds gone/, but the user put a file of their own in the
    restored copy: the server keeps it and says so (a warning), the restore completes."""
    with servers(tmp_path, "nas") as [nas]:
        spec, catalog, vol = f"ndmp@{nas.host}", tmp_path / "c.db", tmp_path / "nas" / "vol"
        (vol / "gone").mkdir()
        (vol / "gone" / "old.txt").write_text("deleted at level 1")
        (vol / "kept.txt").write_text("kept")
        level0 = _backup(spec, catalog, tmp_path)
        (vol / "gone" / "old.txt").unlink()
        (vol / "gone").rmdir()
        level1 = _backup(spec, catalog, tmp_path, "--level", "1", "-E", f"BASE_DATE={level0['env']['DUMP_DATE']}")
        first = ndmp("restore", level0["id"], "--to", f"{spec}:/export/out/w", "--catalog", str(catalog),
                     home=tmp_path)
        assert first.returncode == 0, first.stderr
        (tmp_path / "nas" / "out" / "w" / "gone" / "mine.txt").write_text("the user's own")

        plain = ndmp("restore", level1["id"], "--to", f"{spec}:/export/out/w", "--catalog", str(catalog),
                     home=tmp_path)
        assert plain.returncode == 3, (plain.stdout, plain.stderr)
        [line] = [x for x in plain.stderr.splitlines() if "gone" in x]
        assert line.startswith(f"ndmp: {spec} warning: ") and "kept" in line, plain.stderr
        assert " done: " in plain.stdout and "1 warning" in plain.stdout
        assert (tmp_path / "nas" / "out" / "w" / "gone" / "mine.txt").exists()

        as_json = ndmp("restore", level1["id"], "--to", f"{spec}:/export/out/w", "--catalog", str(catalog),
                       "--json", home=tmp_path)
        assert as_json.returncode == 3, as_json.stderr
        lines = json_lines(as_json.stdout)
        logs = [x for x in lines if x["type"] == "log" and "gone" in x["text"]]
        assert logs and logs[0]["level"] == "warning" and logs[0]["host"] == spec, lines
        assert lines[-1]["type"] == "summary" and lines[-1]["status"] == "done"
        assert any("gone" in w for w in lines[-1]["warnings"])

        v2 = ndmp("restore", level1["id"], "--to", f"{spec}:/export/out/w", "--catalog", str(catalog),
                  "--json", "--version", "2", home=tmp_path)
        assert v2.returncode == 0, v2.stderr       # NDMPv2's LOG_LOG has no level: shown, but no exit 3
        lines = json_lines(v2.stdout)
        assert [x["level"] for x in lines if x["type"] == "log" and "gone" in x["text"]] == ["normal"], lines


def test_as_of_gives_one_summary_per_recover_in_chain_order(tmp_path):
    with servers(tmp_path, "nas") as [nas]:
        spec, catalog, vol = f"ndmp@{nas.host}", tmp_path / "c.db", tmp_path / "nas" / "vol"
        (vol / "a.txt").write_text("a")
        level0 = _backup(spec, catalog, tmp_path)
        (vol / "b.txt").write_text("b")
        level1 = _backup(spec, catalog, tmp_path, "--level", "1", "-E", f"BASE_DATE={level0['env']['DUMP_DATE']}")
        plain = ndmp("restore", "--as-of", "now", f"{spec}:/export/data", "--to", f"{spec}:/export/out/c",
                     "--catalog", str(catalog), home=tmp_path)
        assert plain.returncode == 0, plain.stderr
        assert [line.split()[1] for line in plain.stdout.splitlines()] == [level0["id"], level1["id"]]
        as_json = ndmp("restore", "--as-of", "now", f"{spec}:/export/data", "--to", f"{spec}:/export/out/d",
                       "--catalog", str(catalog), "--json", home=tmp_path)
        summaries = [x for x in json_lines(as_json.stdout) if x["type"] == "summary"]
        assert [s["backup"] for s in summaries] == [level0["id"], level1["id"]]
        assert all(s["status"] == "done" for s in summaries)
        assert json.loads(json.dumps(summaries))[0]["destination"] == "/export/out/d"
