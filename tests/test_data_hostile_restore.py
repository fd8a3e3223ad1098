"""Hostile images over NDMP, with the in-process server and the test as the mover side of a TCP
data connection: DATA_ABORT stops a restore or listing whatever the reader is stuck in, and
LOG_FILE carries the status of the failure that kept a file out (not always "not found")."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import subprocess
import threading
import time

import pytest

from ndmpd.config import build
from ndmpd.engine import pax
from ndmpd.wire import C, T

from .server_thread import ServerThread
from .test_engine_hostile_images import BAD_MEMBERS, END, member, negative_size_header
from .engine_helpers import IS_ROOT


def _config(tmp_path, volume):
    data = {
        "server": {"listen": ["127.0.0.1:0"], "state_dir": str(tmp_path / "state"), "auth": ["md5", "text"]},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "vol", "path": str(volume)}],
        "tape": [{"name": "vtape0", "path": str(tmp_path / "c0.img")}],
    }
    (tmp_path / "state").mkdir(exist_ok=True)
    return build(data, "<test>", tmp_path)


@pytest.fixture
def volume(tmp_path):
    path = tmp_path / "vol"
    path.mkdir()
    return path


@pytest.fixture
def server(tmp_path, volume):
    s = ServerThread(_config(tmp_path, volume))
    yield s
    s.stop()


def _start(dma, operation: str, volume, nlist: list | None = None) -> socket.socket:
    reply = dma.call("DATA_LISTEN", addr_type=C.ADDR_TCP)
    entry = reply.connect_addr.tcp_addr[0]
    sock = socket.create_connection((str(ipaddress.IPv4Address(entry.ip_addr)), entry.port), timeout=10)
    env = [T.pval(name="FILESYSTEM", value=str(volume)), T.pval(name="PREFIX", value=str(volume / "restore"))]
    dma.call(operation, env=env, nlist=nlist or [], butype_name="tar")
    return sock


def _endless_garbage(sock: socket.socket, stop: threading.Event) -> None:
    """Blocks no header parses in, until the data side goes away: the reader resyncs forever."""
    junk = bytes(range(1, 256)) * 4112
    try:
        while not stop.is_set():
            sock.sendall(junk)
    except OSError:
        pass


@pytest.mark.parametrize("operation", ["DATA_START_RECOVER", "DATA_START_RECOVER_FILEHIST"])
@pytest.mark.parametrize("image", ["negative-size-then-silence", "endless-garbage"])
def test_data_abort_stops_a_job_on_a_hostile_image(server, volume, operation, image):
    stop = threading.Event()
    with server.client() as dma:
        sock = _start(dma, operation, volume)
        sender = None
        try:
            if image == "endless-garbage":
                sender = threading.Thread(target=_endless_garbage, args=(sock, stop), daemon=True)
                sender.start()
            else:
                sock.sendall(negative_size_header(pax.XHDTYPE) + member(b"after", b"x"))   # and then nothing
            time.sleep(0.5)
            assert dma.call("DATA_GET_STATE").state == C.DATA_STATE_ACTIVE
            started = time.monotonic()
            dma.call("DATA_ABORT")
            halted = dma.wait_post(C.NOTIFY_DATA_HALTED, timeout=5)
            assert halted.reason == C.DATA_HALT_ABORTED
            assert time.monotonic() - started < 5
            state = dma.call("DATA_GET_STATE")
            assert (state.state, state.halt_reason) == (C.DATA_STATE_HALTED, C.DATA_HALT_ABORTED)
            dma.call("DATA_STOP")
        finally:
            stop.set()
            sock.close()
            if sender:
                sender.join(timeout=5)


def _log_files(dma) -> list:
    return [body for code, body in dma.posts if code == C.LOG_FILE]


def _restore_image(dma, volume, image: bytes, nlist: list | None = None) -> None:
    sock = _start(dma, "DATA_START_RECOVER", volume, nlist)
    with sock:
        sock.sendall(image)
    assert dma.wait_post(C.NOTIFY_DATA_HALTED, timeout=30).reason == C.DATA_HALT_SUCCESSFUL
    dma.call("DATA_STOP")


@pytest.mark.skipif(not IS_ROOT, reason="mounts a small tmpfs as the volume")
@pytest.mark.parametrize("version", [3, 4])
def test_log_file_says_a_full_disk_is_an_io_error_not_not_found(tmp_path, version, monkeypatch):
    from ndmpd.services.data import Data
    sent = []                       # the bodies as posted in the session's version (the client
    real_post = Data.post           # shows v2/v3 bodies in the v4 form, which has no "error")

    def post(self, code, body):
        sent.append((code, body))
        return real_post(self, code, body)

    monkeypatch.setattr(Data, "post", post)
    volume = tmp_path / "small"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(volume)], check=True)
    try:
        s = ServerThread(_config(tmp_path, volume))
        try:
            with s.client(version) as dma:
                _restore_image(dma, volume, member(b"large/big1.bin", bytes(1 << 20)) + END)
                (post,) = [body for code, body in sent if code == C.LOG_FILE]
                messages = [body.entry for code, body in dma.posts if code == C.LOG_MESSAGE]
        finally:
            s.stop()
    finally:
        subprocess.run(["umount", str(volume)], check=True)
    if version == 4:
        assert post.recovery_status == C.RECOVERY_FAILED_IO_ERROR
    else:
        assert post.error == C.IO_ERR
    assert any("No space left on device" in m for m in messages), messages


def test_log_file_says_a_file_in_the_way_of_a_directory_is_no_directory(server, volume):
    (volume / "restore").mkdir()
    (volume / "restore" / "sub").write_text("a file where the image has a directory")
    with server.client(4) as dma:
        _restore_image(dma, volume, member(b"sub/file", b"x") + END)
        (post,) = _log_files(dma)
    assert post.recovery_status == C.RECOVERY_FAILED_NO_DIRECTORY


def _name(source: str, destination: str):
    return T.name(original_path=source, destination_path=destination, name="", other_name="", node=0,
                  fh_info=0)


def _level1_image() -> bytes:
    """A level-1 image whose sub/ directory lists just "kept" (and holds it)."""
    return (pax.extended_header(pax.pax_record(b"NDMPD.level", b"1"), pax.XGLTYPE)
            + member(b"./", typeflag=pax.DIRTYPE, mode=0o755, records=pax.pax_record(b"GNU.dumpdir", b"Dsub\0\0"))
            + member(b"./sub/", typeflag=pax.DIRTYPE, mode=0o755, records=pax.pax_record(b"GNU.dumpdir", b"Ykept\0\0"))
            + member(b"./sub/kept", b"kept") + END)


def test_an_nlist_subdirectory_of_an_incremental_onto_the_volume_deletes_nothing_there(server, volume):
    (volume / "precious").write_text("the volume's own data")
    (volume / "other-dir").mkdir()
    with server.client(4) as dma:
        _restore_image(dma, volume, _level1_image(), [_name("/sub", str(volume))])
    assert (volume / "precious").read_text() == "the volume's own data"
    assert (volume / "other-dir").is_dir() and (volume / "kept").read_text() == "kept"


def test_an_nlist_file_gets_its_directories_with_the_images_modes(server, volume):
    image = (member(b"./", typeflag=pax.DIRTYPE, mode=0o755) + member(b"./dir/", typeflag=pax.DIRTYPE, mode=0o755)
             + member(b"./dir/sub/", typeflag=pax.DIRTYPE, mode=0o751) + member(b"./dir/sub/file", b"f") + END)
    with server.client(4) as dma:
        _restore_image(dma, volume, image, [_name("/dir/sub/file", str(volume / "restore" / "dir" / "sub" / "file"))])
    out = volume / "restore"
    assert (out / "dir" / "sub" / "file").read_bytes() == b"f"
    assert stat.S_IMODE(os.stat(out / "dir").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "dir" / "sub").st_mode) == 0o751


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
@pytest.mark.parametrize("operation", ["DATA_START_RECOVER", "DATA_START_RECOVER_FILEHIST"])
def test_a_bad_member_over_ndmp_is_refused_and_the_job_succeeds(server, volume, case, operation):
    image = member(b"before", b"b") + BAD_MEMBERS[case] + member(b"after", b"a") + END
    with server.client(4) as dma:
        sock = _start(dma, operation, volume)
        with sock:
            sock.sendall(image)
        halted = dma.wait_post(C.NOTIFY_DATA_HALTED, timeout=30)
        messages = [body.entry for code, body in dma.posts if code == C.LOG_MESSAGE]
        dma.call("DATA_STOP")
    assert halted.reason == C.DATA_HALT_SUCCESSFUL, messages
    if operation == "DATA_START_RECOVER":
        assert (volume / "restore" / "after").read_bytes() == b"a"
        assert any("refused" in m for m in messages), messages


class _DataStub:
    """Just what Data.log_file uses: the session's version, posts and log messages."""

    def __init__(self, version: int) -> None:
        self.version, self.posts, self.messages = version, [], []

    def post(self, code, body):
        self.posts.append((code, body))

    def log_message(self, text, level="normal"):
        self.messages.append(text)


@pytest.mark.parametrize("kind, v4, older", [
    ("no-space", "RECOVERY_FAILED_IO_ERROR", "IO_ERR"), ("io-error", "RECOVERY_FAILED_IO_ERROR", "IO_ERR"),
    ("permission", "RECOVERY_FAILED_PERMISSION", "PERMISSION_ERR"),
    ("not-found", "RECOVERY_FAILED_NOT_FOUND", "FILE_NOT_FOUND_ERR"),
    ("no-directory", "RECOVERY_FAILED_NO_DIRECTORY", "FILE_NOT_FOUND_ERR"),
    ("no-memory", "RECOVERY_FAILED_OUT_OF_MEMORY", "NO_MEM_ERR"),
    ("exists", "RECOVERY_FAILED_FILE_PATH_EXISTS", "UNDEFINED_ERR"),
    ("invalid", "RECOVERY_FAILED_UNDEFINED_ERROR", "UNDEFINED_ERR"),
])
@pytest.mark.parametrize("version", [2, 3, 4])
def test_log_file_status_follows_the_failure_kind_in_every_version(version, kind, v4, older):
    from ndmpd.services.data import Data
    from ndmpd.wire import protocol
    stub = _DataStub(version)
    Data.log_file(stub, "/large/big1.bin", False, "the cause, in words", kind)
    ((code, body),) = stub.posts
    assert code == C.LOG_FILE
    if version == 4:
        assert body.recovery_status == getattr(C, v4)
    else:
        assert body.error == getattr(protocol(version).const, older)
    assert stub.messages == ["/large/big1.bin: not restored: the cause, in words"]
