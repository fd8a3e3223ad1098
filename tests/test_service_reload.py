"""SIGHUP reload: new sessions get the new configuration, running ones keep theirs, shared
device state stays one, and a bad file changes nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from ndmpd.config import load
from ndmpd.context import ServerContext
from tests.blocking_client import NdmpClient, NdmpReplyError
from ndmpd.server import NdmpServer
from ndmpd.wire import C


def write(tmp_path, volumes=("/export/data",), capacity="1GiB", listen="127.0.0.1:0", extra=""):
    text = f'[server]\nlisten = ["{listen}"]\nstate_dir = "{tmp_path / "state"}"\n{extra}\n'
    text += '[[user]]\nname = "ndmp"\npassword = "secret"\n'
    for i, name in enumerate(volumes):
        (tmp_path / f"vol{i}").mkdir(exist_ok=True)
        text += f'[[volume]]\nname = "{name}"\npath = "{tmp_path / f"vol{i}"}"\n'
    text += f'[[tape]]\nname = "vtape0"\npath = "{tmp_path / "vtape0.img"}"\ncapacity = "{capacity}"\n'
    path = tmp_path / "ndmpd.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


async def serve(tmp_path):
    path = write(tmp_path)
    srv = NdmpServer(ServerContext(load(path)), reload_config=lambda: load(path))
    host, port = (await srv.start())[0]
    return srv, path, host, port


def session(host, port):
    client = NdmpClient(host, port, 4)
    client.login("ndmp", "secret")
    return client


async def shut_down(srv, *clients) -> None:
    """Close the clients, then stop the server and wait for it."""
    for client in clients:
        await asyncio.to_thread(client.close)
    srv.stop()
    await srv.serve_until_stopped()


def volumes(client) -> list[str]:
    return sorted(fs.fs_logical_device for fs in client.call("CONFIG_GET_FS_INFO").fs_info)


async def test_new_sessions_see_the_reloaded_configuration_and_running_ones_keep_theirs(tmp_path):
    srv, path, host, port = await serve(tmp_path)
    before = await asyncio.to_thread(session, host, port)
    write(tmp_path, volumes=("/export/data", "/export/new"))
    assert srv.reload()
    after = await asyncio.to_thread(session, host, port)
    assert await asyncio.to_thread(volumes, after) == ["/export/data", "/export/new"]
    assert await asyncio.to_thread(volumes, before) == ["/export/data"]
    await shut_down(srv, before, after)


async def test_a_bad_configuration_is_refused_in_one_line_and_the_old_stays(tmp_path, caplog):
    srv, path, host, port = await serve(tmp_path)
    path.write_text(path.read_text().replace("[[volume]]", "[[volume]]\nsnapshoot = 1"))
    with caplog.at_level(logging.ERROR, "ndmpd.server"):
        assert not srv.reload()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["reload refused, configuration unchanged: volume[0].snapshoot: unknown key (did you mean 'snapshot'?)"]
    path.write_text("not = [toml")
    assert not srv.reload()
    client = await asyncio.to_thread(session, host, port)
    assert await asyncio.to_thread(volumes, client) == ["/export/data"]
    await shut_down(srv, client)


async def test_a_drive_held_under_the_old_configuration_stays_held(tmp_path):
    srv, path, host, port = await serve(tmp_path)
    old = await asyncio.to_thread(session, host, port)
    await asyncio.to_thread(old.call, "TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    write(tmp_path, capacity="2GiB")                  # the drive's definition changes
    assert srv.reload()
    new = await asyncio.to_thread(session, host, port)
    with pytest.raises(NdmpReplyError, match="DEVICE_BUSY"):
        await asyncio.to_thread(new.call, "TAPE_OPEN", device="vtape0", mode=C.TAPE_RDWR_MODE)
    await asyncio.to_thread(old.call, "TAPE_WRITE", data_out=b"x" * 1024)   # the holder goes on
    await asyncio.to_thread(old.call, "TAPE_CLOSE")
    await asyncio.to_thread(new.call, "TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)
    await asyncio.to_thread(new.call, "TAPE_CLOSE")
    await shut_down(srv, old, new)


async def test_a_listen_change_waits_for_a_restart_and_says_so(tmp_path, caplog):
    srv, path, host, port = await serve(tmp_path)
    write(tmp_path, volumes=("/export/data", "/export/b"), listen="127.0.0.1:1")
    with caplog.at_level(logging.WARNING, "ndmpd.server"):
        assert srv.reload()
    assert any("server.listen changed" in r.getMessage() and "restart" in r.getMessage() for r in caplog.records)
    client = await asyncio.to_thread(session, host, port)      # still served where it was
    assert await asyncio.to_thread(volumes, client) == ["/export/b", "/export/data"]
    await shut_down(srv, client)


async def test_sighup_reloads_instead_of_killing_the_server(tmp_path):
    srv, path, host, port = await serve(tmp_path)
    stopped = asyncio.ensure_future(srv.serve_until_stopped())
    await asyncio.sleep(0.1)
    write(tmp_path, volumes=("/export/data", "/export/hup"))
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.sleep(0.2)
    client = await asyncio.to_thread(session, host, port)
    assert await asyncio.to_thread(volumes, client) == ["/export/data", "/export/hup"]
    await asyncio.to_thread(client.close)
    srv.stop()
    await stopped
    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


LIBRARY = """
[[tape]]
name = "ltape0"
[[changer]]
name = "vlib0"
path = "{lib}"
drives = ["ltape0"]
"""


async def test_a_library_survives_a_reload_and_stays_open_in_its_session(tmp_path):
    path = write(tmp_path)
    path.write_text(path.read_text() + LIBRARY.format(lib=tmp_path / "vlib0"))
    srv = NdmpServer(ServerContext(load(path)), reload_config=lambda: load(path))
    host, port = (await srv.start())[0]
    old = await asyncio.to_thread(session, host, port)
    await asyncio.to_thread(old.call, "SCSI_OPEN", device="vlib0")
    library = srv.ctx.changers.libraries["vlib0"]
    path.write_text(path.read_text().replace('name = "/export/data"', 'name = "/export/renamed"'))
    assert srv.reload()
    assert srv.ctx.changers.libraries["vlib0"] is library        # unchanged: the same library, not a second
    new = await asyncio.to_thread(session, host, port)
    await asyncio.to_thread(new.call, "SCSI_OPEN", device="vlib0")       # shared, as a real changer
    assert srv.ctx.changers.open_count("vlib0") == 2                      # both registries see both
    await asyncio.to_thread(old.call, "SCSI_CLOSE")
    await asyncio.to_thread(new.call, "SCSI_CLOSE")
    assert srv.ctx.changers.open_count("vlib0") == 0
    await shut_down(srv, old, new)


async def test_a_reload_applies_server_log_level_unless_the_command_line_set_one(tmp_path):
    from ndmpd import cli, trace

    root = logging.getLogger()
    before = root.level
    path = write(tmp_path, extra='log_level = "info"')
    try:
        root.setLevel(logging.INFO)
        srv = NdmpServer(ServerContext(load(path)), reload_config=cli._loader(cli._parser().parse_args(
            ["serve", "--config", str(path)])))
        write(tmp_path, extra='log_level = "debug"')
        assert srv.reload() and trace.enabled()          # an admin turns tracing on without a restart
        write(tmp_path, extra='log_level = "warning"')
        assert srv.reload() and not logging.getLogger("ndmpd.server").isEnabledFor(logging.INFO)
        pinned = NdmpServer(ServerContext(load(path)), reload_config=cli._loader(cli._parser().parse_args(
            ["serve", "--config", str(path), "--log-level", "warning"])))
        write(tmp_path, extra='log_level = "debug"')
        assert pinned.reload() and not trace.enabled()   # --log-level keeps its word across reloads
    finally:
        root.setLevel(before)


async def test_a_user_removed_by_a_reload_cannot_log_in_on_a_connection_opened_before(tmp_path):
    srv, path, host, port = await serve(tmp_path)
    early = await asyncio.to_thread(NdmpClient, host, port, 4)          # connected, not logged in yet
    path.write_text(path.read_text().replace('name = "ndmp"\npassword = "secret"',
                                             'name = "other"\npassword = "new-secret"'))
    assert srv.reload()
    with pytest.raises(NdmpReplyError):                                  # the revoked account is refused
        await asyncio.to_thread(early.login, "ndmp", "secret")
    await asyncio.to_thread(early.login, "other", "new-secret")
    await shut_down(srv, early)
