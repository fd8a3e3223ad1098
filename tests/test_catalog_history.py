"""File history from a real ndmpd backup lands in the catalog: tar's paths and dump's
directory/node history name the same files, with the stats and fh_info the server sent."""

from __future__ import annotations

import os
import socket
import stat
import threading

import pytest

from ndmpd.config import build
from ndmpd.dma.catalog import open_catalog
from ndmpd.dma.catalog_history import HistoryError, HistoryRecorder
from ndmpd.mover.addresses import Endpoint, to_ndmp
from ndmpd.wire import C, T

from .engine_helpers import build_every_case
from .server_thread import ServerThread

FH_CODES = (C.FH_ADD_FILE, C.FH_ADD_DIR, C.FH_ADD_NODE)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fh")
    vol = build_every_case(tmp / "vol")
    odd = vol / "odd names"
    odd.mkdir()
    (odd / "with space.txt").write_text("s")
    (odd / "new\nline").write_text("n")
    with open(os.path.join(os.fsencode(odd), b"latin-\xe9.txt"), "w") as f:   # not UTF-8
        f.write("l")
    data = {
        "server": {"listen": ["127.0.0.1:0"], "state_dir": str(tmp / "state"), "auth": ["md5", "text"]},
        "user": [{"name": "ndmp", "password": "secret"}],
        "volume": [{"name": "/vol", "path": str(vol), "snapshot": "none"}],
        "tape": [{"name": "vtape0", "path": str(tmp / "c0.img")}],
    }
    (tmp / "state").mkdir()
    server = ServerThread(build(data, "<test>", tmp))
    yield server, vol
    server.stop()


def backup_posts(server: ServerThread, butype: str, version: int) -> list[tuple[int, object]]:
    """The FH posts of one real backup with history, in the order the DMA received them."""
    listener = socket.create_server(("127.0.0.1", 0))
    image = bytearray()
    with server.client(version) as dma:
        dma.call("DATA_CONNECT", addr=to_ndmp(Endpoint("127.0.0.1", listener.getsockname()[1])))
        peer, _ = listener.accept()
        dma.call("DATA_START_BACKUP", butype_name=butype,
                 env=[T.pval(name="FILESYSTEM", value="/vol"), T.pval(name="HIST", value="y")])
        def read_all() -> None:                        # the tape: read to the end, then close
            for block in iter(lambda: peer.recv(1 << 20), b""):
                image.extend(block)
            peer.close()
        reader = threading.Thread(target=read_all)
        reader.start()
        halted = dma.wait_post(C.NOTIFY_DATA_HALTED, timeout=60)
        reader.join(30)
        dma.call("DATA_STOP")
        posts = [p for p in dma.posts if p[0] in FH_CODES]
    listener.close()
    assert halted.reason == C.DATA_HALT_SUCCESSFUL
    return posts


def expected_paths(vol) -> dict[bytes, os.stat_result]:
    root = os.fsencode(vol)
    out = {b"/": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[b"/" + os.path.relpath(full, root)] = os.lstat(full)
    return out


def record(tmp_path, posts, butype="tar"):
    cat = open_catalog(tmp_path / "catalog.db")
    backup = cat.begin_backup(host="local", volume="/vol", butype=butype, level=0)
    with cat.history(backup.id) as recorder:
        for code, body in posts:
            recorder.post(code, body)
    cat.finish_backup(backup.id, "done")
    return cat, backup


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("butype", ["tar", "dump"])
def test_history_of_a_real_backup_names_every_file_with_its_stat(served, tmp_path, butype, version):
    server, vol = served
    posts = backup_posts(server, butype, version)
    kinds = {code for code, _ in posts}
    assert kinds == ({C.FH_ADD_FILE} if butype == "tar" else {C.FH_ADD_DIR, C.FH_ADD_NODE})
    cat, backup = record(tmp_path, posts, butype)
    want = expected_paths(vol)
    got = {e.path: e for e in cat.entries(backup.id)}
    assert set(got) == set(want)
    assert cat.get(backup.id).entries == len(want)
    for path, s in want.items():
        e = got[path]
        assert stat.S_IFMT(e.mode) == stat.S_IFMT(s.st_mode), path
        assert stat.S_IMODE(e.mode) == stat.S_IMODE(s.st_mode), path
        assert e.inode == s.st_ino, path
        assert e.mtime == int(s.st_mtime), path
        if stat.S_ISREG(s.st_mode):
            assert e.size == s.st_size, path
        assert e.fh_info is not None
    offsets = [got[p].fh_info for p in sorted(got, key=lambda p: got[p].fh_info)]
    assert len(set(offsets)) >= len(offsets) // 2          # offsets into the image, not all zero
    # ls, lookup and find answer by those paths, odd names included
    names = {e.path for e in cat.ls(backup.id, "/odd names")}
    assert names == {b"/odd names/with space.txt", b"/odd names/new\nline", b"/odd names/latin-\xe9.txt"}
    assert cat.lookup(backup.id, "/odd names/new\nline").size == 1
    assert cat.lookup(backup.id, os.fsdecode(b"/odd names/latin-\xe9.txt")).fh_info == \
        got[b"/odd names/latin-\xe9.txt"].fh_info
    assert [e.path for e in cat.find("*.txt") if e.path.startswith(b"/odd")] == \
        [b"/odd names/latin-\xe9.txt", b"/odd names/with space.txt"]
    assert [e.path for e in cat.find("/odd names/lat?n-?.txt")] == [b"/odd names/latin-\xe9.txt"]
    cat.close()


def test_tar_and_dump_history_resolve_to_the_same_paths(served, tmp_path):
    server, _ = served
    tar_cat, tar_backup = record(tmp_path / "t", backup_posts(server, "tar", 4))
    dump_cat, dump_backup = record(tmp_path / "d", backup_posts(server, "dump", 4), "dump")
    tar = {e.path: (e.inode, e.mode, e.size if stat.S_ISREG(e.mode) else None)
           for e in tar_cat.entries(tar_backup.id)}
    dump = {e.path: (e.inode, e.mode, e.size if stat.S_ISREG(e.mode) else None)
            for e in dump_cat.entries(dump_backup.id)}
    assert tar == dump


def test_dump_nodes_before_their_directory_entries_still_resolve(served, tmp_path):
    """Another server may send all nodes first: they wait for their names."""
    server, vol = served
    posts = backup_posts(server, "dump", 4)
    reordered = [p for p in posts if p[0] == C.FH_ADD_NODE] + [p for p in posts if p[0] == C.FH_ADD_DIR]
    cat, backup = record(tmp_path, reordered, "dump")
    assert {e.path for e in cat.entries(backup.id)} == set(expected_paths(vol))


class BrokenWriter:
    def __init__(self):
        self.closed = False

    def write(self, rows):
        raise OSError(28, "No space left on device")

    def close(self):
        self.closed = True


def test_a_writer_failure_surfaces_at_finish_and_on_the_next_post(served):
    server, _ = served
    posts = backup_posts(server, "tar", 4)
    writer = BrokenWriter()
    recorder = HistoryRecorder(writer, batch_rows=1).start()
    recorder.post(*posts[0])
    with pytest.raises(HistoryError) as failed:
        recorder.finish()
    assert "No space left" in str(failed.value.__cause__)
    assert writer.closed
    with pytest.raises(HistoryError):
        recorder.post(*posts[0])


def test_v2_history_names_the_same_files(tmp_path):
    """v2's FH_ADD_UNIX_PATH/DIR/NODE as ndmpd encodes them (a v2 backup needs a mover, not a
    DATA_CONNECT, so the bodies come from the server's encoder, not a live backup)."""
    from ndmpd.data.fh_wire import fh_encoder
    from ndmpd.wire import REQUEST, protocol
    v2, enc = protocol(2), fh_encoder(2)

    def post(kind, entries):
        code, body = enc.post(kind, entries)
        return code, v2.decode_body(code, REQUEST, body, 0)
    tar = [post("file", [enc.file(b"/", 0o40755, 0, 0, 0, 5, 5, 5, 2, 1, 0),
                         enc.file(b"/d/x y", 0o100600, 0, 0, 7, 6, 6, 6, 1, 3, 1024)])]
    dump = [post("dir", [enc.dir(b".", 1, 1), enc.dir(b"d", 2, 1), enc.dir(b"x y", 3, 2)]),
            post("node", [enc.node(0o40755, 0, 0, 0, 5, 5, 5, 2, 1, 0), enc.node(0o40700, 0, 0, 0, 5, 5, 5, 2, 2, 512),
                          enc.node(0o100600, 0, 0, 7, 6, 6, 6, 1, 3, 1024)])]
    cat, tar_backup = record(tmp_path / "t", tar)
    e = cat.lookup(tar_backup.id, "/d/x y")
    assert (e.size, e.mode, e.mtime, e.fh_info, e.inode) == (7, 0o100600, 6, 1024, None)
    cat2, dump_backup = record(tmp_path / "d", dump, "dump")
    assert [x.path for x in cat2.entries(dump_backup.id)] == [b"/", b"/d", b"/d/x y"]
    e = cat2.lookup(dump_backup.id, "/d/x y")
    assert (e.size, e.mode, e.mtime, e.fh_info, e.inode) == (7, 0o100600, 6, 1024, 3)


def test_deep_dump_trees_resolve_and_a_loop_in_hostile_history_does_not_hang(tmp_path):
    from ndmpd.data.fh_wire import FhWire
    from ndmpd.wire import REQUEST, protocol
    v4, wire = protocol(4), FhWire(4)

    def post(kind, entries):
        code, body = wire.post(kind, entries)
        return code, v4.decode_body(code, REQUEST, body, 0)
    depth = 3000                                   # deeper than Python's recursion limit
    dirs = [wire.dir(b".", 1, 1)] + [wire.dir(b"d", n, n - 1) for n in range(2, depth + 2)]
    dirs += [wire.dir(b"a", 90_001, 90_002), wire.dir(b"b", 90_002, 90_001)]   # a loop, never rooted
    nodes = [wire.node(0o40755, 0, 0, 0, 1, 1, 1, 2, n, n) for n in range(1, depth + 2)]
    nodes += [wire.node(0o100644, 0, 0, 1, 1, 1, 1, 1, 90_001, 7)]
    cat, backup = record(tmp_path, [post("dir", dirs), post("node", nodes)], "dump")
    deepest = b"/" + b"/".join([b"d"] * depth)
    assert cat.lookup(backup.id, deepest).fh_info == depth + 1
    assert cat.get(backup.id).entries == depth + 1      # the looped node is left out, not looped on


def as_records(posts, version: int) -> list[tuple[int, int, bytes]]:
    """Decoded posts back as the records the server sent (header and body, NDMPv``version``)."""
    from ndmpd.wire import REQUEST, Translator, protocol
    from ndmpd.wire.message import Header
    proto = protocol(version)
    translator = Translator(proto)
    return [(version, code, Header(1, 0, REQUEST, code, 0, 0).pack() +
             proto.encode_body(code, REQUEST, translator.from_internal(code, REQUEST, body)))
            for code, body in posts]


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("butype", ["tar", "dump"])
def test_undecoded_records_give_the_catalog_the_decoded_posts_give(served, tmp_path, butype, version):
    """What ``ndmp backup`` does (Agent.on_raw → post_raw: the worker reads the bytes itself)
    stores the same rows as the codec's objects would."""
    server, _ = served
    posts = backup_posts(server, butype, version)
    decoded_cat, decoded = record(tmp_path / "a", posts, butype)
    raw_cat = open_catalog(tmp_path / "b" / "catalog.db")
    raw = raw_cat.begin_backup(host="local", volume="/vol", butype=butype, level=0)
    with raw_cat.history(raw.id) as recorder:
        for post in as_records(posts, version):
            assert recorder.post_raw(*post) is None            # a small backup: never pushed back
    want = {e.path: (e.inode, e.size, e.mode, e.mtime, e.fh_info) for e in decoded_cat.entries(decoded.id)}
    got = {e.path: (e.inode, e.size, e.mode, e.mtime, e.fh_info) for e in raw_cat.entries(raw.id)}
    assert got == want and len(got) > 20


def test_an_unusual_entry_in_a_raw_post_falls_back_to_the_codec(tmp_path):
    """An NT name (or any entry not one UNIX name and one stat) is read by the codec, not lost."""
    nt = T.file_name(fs_type=C.FS_NT, nt_name=T.nt_path(nt_path="C:\\nt.txt", dos_path="NT.TXT"))
    unix = T.file_name(fs_type=C.FS_UNIX, unix_name="/u.txt")
    stat_ = T.file_stat(unsupported=0, fs_type=C.FS_UNIX, ftype=C.FILE_REG, mtime=5, atime=5, ctime=5, owner=0,
                        group=0, fattr=0o644, size=3, links=1)
    body = T.fh_add_file_post(files=[T.file(names=[unix], stats=[stat_], node=7, fh_info=70),
                                        T.file(names=[nt], stats=[stat_], node=8, fh_info=80)])
    cat = open_catalog(tmp_path / "catalog.db")
    backup = cat.begin_backup(host="local", volume="/vol", butype="tar", level=0)
    with cat.history(backup.id) as recorder:
        recorder.post_raw(*as_records([(C.FH_ADD_FILE, body)], 4)[0])
    assert {e.path: e.fh_info for e in cat.entries(backup.id)} == {b"/u.txt": 70, b"/C:\\nt.txt": 80}


def test_the_writer_process_failure_is_raised_by_finish(tmp_path):
    """History goes to a child process (catalog_writer.py); when it cannot store a batch the
    recorder's finish() says so instead of the rows silently missing."""
    from ndmpd.dma.catalog_writer import ProcessFileWriter
    bad = tmp_path / "not-a-catalog.db"
    bad.write_bytes(b"this is not an SQLite file" * 100)
    recorder = HistoryRecorder(ProcessFileWriter(bad, 1), batch_rows=10).start()
    for i in range(30):
        recorder.post(C.FH_ADD_FILE, T.fh_add_file_post(files=[T.file(
            names=[T.file_name(fs_type=C.FS_UNIX, unix_name=f"/f{i}")],
            stats=[T.file_stat(ftype=C.FILE_REG, fattr=0o644, size=1, mtime=1)], node=i, fh_info=i)]))
    with pytest.raises(HistoryError) as caught:
        recorder.finish()
    assert "not a database" in str(caught.value.__cause__)


def test_the_writer_process_stores_every_batch_and_ends(tmp_path):
    from ndmpd.dma.catalog_writer import ProcessFileWriter
    cat = open_catalog(tmp_path / "catalog.db")
    backup = cat.begin_backup(host="local", volume="/vol", butype="tar", level=0)
    writer = ProcessFileWriter(tmp_path / "catalog.db", 1)
    for batch in range(5):
        writer.write([(b"/", b"f%d-%d" % (batch, i), i, 1, 0o100644, 1, i) for i in range(100)])
    child = writer._child
    writer.close()
    assert child.returncode == 0
    assert cat.get(backup.id).entries == 500 and cat.lookup(backup.id, "/f4-99").fh_info == 99
    cat.close()
