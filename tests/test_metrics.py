"""Metrics without a network: counters follow the session's events, the live view its jobs,
each server context has its own registry, and ``server.metrics_listen`` is validated."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ndmpd.config import ConfigError
from ndmpd.context import ServerContext
from ndmpd.wire import protocol

from .helpers import make_config, new_session

P4 = protocol(4)
T4, C4 = P4.types, P4.const


def samples(ctx: ServerContext) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(ctx.metrics.exposition().decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_sessions_auth_failures_and_error_replies_are_counted(tmp_path):
    session, dma = new_session(make_config(tmp_path, auth=["text"]))
    ctx = session.ctx
    wrong = T4.auth_data(C4.AUTH_TEXT, auth_text=T4.auth_text("ndmp", "wrong"))
    dma.call("CONNECT_CLIENT_AUTH", auth_data=wrong)
    dma.call("CONFIG_GET_HOST_INFO")                                    # NOT_AUTHORIZED header error
    right = T4.auth_data(C4.AUTH_TEXT, auth_text=T4.auth_text("ndmp", "secret"))
    dma.call("CONNECT_CLIENT_AUTH", auth_data=right)
    dma.call("TAPE_OPEN", device="nosuch", mode=C4.TAPE_READ_MODE)
    values = samples(ctx)
    assert values["ndmpd_sessions_total"] == 1
    assert values["ndmpd_auth_failures_total"] == 1
    assert values['ndmpd_error_replies_total{error="NOT_AUTHORIZED_ERR"}'] == 2
    assert values['ndmpd_error_replies_total{error="NO_DEVICE_ERR"}'] == 1


def test_every_context_has_its_own_registry(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = new_session(make_config(tmp_path / "a"))
    second, _ = new_session(make_config(tmp_path / "b"))
    assert first.ctx.metrics.registry is not second.ctx.metrics.registry
    assert samples(first.ctx)["ndmpd_sessions_total"] == 1 == samples(second.ctx)["ndmpd_sessions_total"]


def test_running_jobs_and_bytes_are_read_live_and_never_go_back(tmp_path):
    session, _ = new_session(make_config(tmp_path))
    ctx = session.ctx
    ctx.sessions.add(session)
    session.data.state, session.data.operation, session.data.bytes_processed = (
        C4.DATA_STATE_ACTIVE, C4.DATA_OP_BACKUP, 1000)
    session.mover.state, session.mover.mode, session.mover.bytes_moved = (
        C4.MOVER_STATE_ACTIVE, C4.MOVER_MODE_READ, 900)
    values = samples(ctx)
    assert values["ndmpd_sessions_current"] == 1
    assert values['ndmpd_jobs_active{kind="backup"}'] == 1 and values['ndmpd_jobs_active{kind="mover_read"}'] == 1
    assert values['ndmpd_bytes_total{service="data"}'] == 1000
    session.data.bytes_processed = 5000
    assert samples(ctx)['ndmpd_bytes_total{service="data"}'] == 5000           # moves during the job
    session.data.state = C4.DATA_STATE_HALTED                                   # halted, not yet counted
    assert samples(ctx)['ndmpd_bytes_total{service="data"}'] == 5000
    ctx.metrics.data_halted(C4.DATA_OP_BACKUP, C4.DATA_HALT_SUCCESSFUL, 5000)
    values = samples(ctx)
    assert values['ndmpd_jobs_total{kind="backup",outcome="SUCCESSFUL"}'] == 1
    assert values['ndmpd_bytes_total{service="data"}'] == 5000
    assert values['ndmpd_jobs_active{kind="backup"}'] == 0


def test_snapshots_held_are_counted_from_disk(tmp_path):
    session, _ = new_session(make_config(tmp_path))
    volume = session.ctx.config.volumes[0].path
    (volume / ".ndmpd-snapshots" / "123-456-abc").mkdir(parents=True)
    assert samples(session.ctx)["ndmpd_snapshots"] == 1


@pytest.mark.parametrize("value", ["127.0.0.1", "::1", "127.0.0.1:x", "1.2.3.4:70000", 9100])
def test_metrics_listen_needs_an_address_and_a_port(tmp_path, value):
    with pytest.raises(ConfigError, match="server.metrics_listen"):
        make_config(tmp_path, metrics_listen=value)


def test_metrics_listen_is_off_unless_set(tmp_path):
    assert make_config(tmp_path).server.metrics_listen is None
    listen = make_config(tmp_path, metrics_listen="[::1]:9100").server.metrics_listen
    assert (listen.host, listen.port) == ("::1", 9100)


async def test_idle_scrapers_cannot_hold_more_than_a_few_connections(tmp_path):
    """A flood of idle HTTP clients must not pile up descriptors the NDMP listener needs;
    a real scrape still gets its answer at once."""
    import asyncio
    import time

    from ndmpd.server import NdmpServer

    held_at_most = 32                       # a few scrapers at once is all a Prometheus needs

    srv = NdmpServer(ServerContext(make_config(tmp_path, listen=["127.0.0.1:0"], metrics_listen="127.0.0.1:0")))
    await srv.start()
    host, port = srv.metrics_address
    idle = [await asyncio.open_connection(host, port) for _ in range(held_at_most * 2)]
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 2)
    assert answer.startswith(b"HTTP/1.0 200") and b"ndmpd_sessions_total" in answer
    closed = 0
    for idle_reader, _ in idle:             # all but the newest few were cut, long before HEAD_TIMEOUT
        try:
            closed += await asyncio.wait_for(idle_reader.read(), 0.05) == b""
        except ConnectionError:
            closed += 1
        except asyncio.TimeoutError:
            pass
    assert closed >= len(idle) - held_at_most and time.monotonic() - started < 3
    for _, idle_writer in idle:
        idle_writer.close()
    writer.close()
    srv.stop()
    await srv.serve_until_stopped()
