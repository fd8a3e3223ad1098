"""The Prometheus endpoint scraped while ndmjob runs a two-way backup (LOCAL mover)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.interop.conftest import NDMJOB, NDMJOB_WRAPPER, PASSWORD, free_loopback_address, write_config
from tests.server_process import ServerProcess

PROGRAM = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@pytest.fixture
def metrics_server(ndmjob, tmp_path):
    host = free_loopback_address()
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, host, ["md5", "text"])
    text = config.read_text().replace('log_level = "debug"', f'log_level = "info"\nmetrics_listen = "{host}:{port}"')
    config.write_text(text)
    server = ServerProcess(host, config, tmp_path / "ndmpd.log", PASSWORD)
    yield server, f"http://{host}:{port}/metrics", tmp_path / "vol"
    if server.proc.poll() is None:
        assert server.stop() == 0


def test_scrape_during_a_backup_shows_the_job_and_its_bytes_moving(metrics_server, tmp_path):
    server, url, vol = metrics_server
    idle = scrape(url)
    assert idle["ndmpd_sessions_current"] == 0 and idle['ndmpd_jobs_active{kind="backup"}'] == 0
    assert idle["ndmpd_snapshots"] == 0
    with open(vol / "large.bin", "wb") as out:          # 1 GiB: the dump takes a few seconds
        block = os.urandom(1 << 20)
        for _ in range(1024):
            out.write(block)
    dma = subprocess.Popen([str(PROGRAM), "-c", "-D", server.agent("4"), "-f", "vtape0", "-B", "tar",
                            "-C", "/export/data", "-I", str(tmp_path / "b.idx")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        first = scrape(url)
        while not (first['ndmpd_jobs_active{kind="backup"}'] == 1 and first['ndmpd_bytes_total{service="mover"}'] > 0):
            assert dma.poll() is None and time.monotonic() < deadline, "the backup ended before it was seen"
            time.sleep(0.05)
            first = scrape(url)
        time.sleep(0.4)
        second = scrape(url)
        assert dma.poll() is None, "the backup ended before the second scrape"
        assert second['ndmpd_jobs_active{kind="backup"}'] == 1
        assert second['ndmpd_jobs_active{kind="mover_read"}'] == 1
        assert second["ndmpd_sessions_current"] == 1
        assert second['ndmpd_bytes_total{service="mover"}'] > first['ndmpd_bytes_total{service="mover"}']
        out, _ = dma.communicate(timeout=300)
    finally:
        if dma.poll() is None:
            dma.kill()
            dma.wait()
    assert "Operation ended OKAY" in out, out
    after = scrape(url)
    assert after['ndmpd_jobs_total{kind="backup",outcome="SUCCESSFUL"}'] == 1
    assert after['ndmpd_jobs_active{kind="backup"}'] == 0
    assert sum(v for k, v in after.items() if k.startswith('ndmpd_jobs_total{kind="mover_read"')) == 1
    assert after['ndmpd_bytes_total{service="data"}'] >= 1 << 30
    assert after['ndmpd_bytes_total{service="mover"}'] >= 1 << 30
    deadline = time.monotonic() + 10
    while after["ndmpd_sessions_current"] and time.monotonic() < deadline:    # the server sees the close
        time.sleep(0.05)
        after = scrape(url)
    assert after["ndmpd_sessions_total"] >= 1 and after["ndmpd_sessions_current"] == 0
    assert after["ndmpd_snapshots"] == 0


def test_auth_failures_and_error_replies_are_counted(metrics_server):
    server, url, _ = metrics_server
    bad = f"{server.host}:10000/4t,ndmp,wrong-password"
    subprocess.run([str(PROGRAM), "-q", "-D", bad], capture_output=True, timeout=60)
    values = scrape(url)
    assert values["ndmpd_auth_failures_total"] >= 1
    assert values['ndmpd_error_replies_total{error="NOT_AUTHORIZED_ERR"}'] >= 1
    assert re.match(r"^\d", str(values["ndmpd_sessions_total"]))


def test_unknown_paths_and_garbage_get_an_http_error_and_the_endpoint_goes_on(metrics_server):
    server, url, _ = metrics_server
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.replace("/metrics", "/nothing"), timeout=10)
    assert err.value.code == 404
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\x00\xff" * 10000)
    assert "ndmpd_sessions_total" in scrape(url)
