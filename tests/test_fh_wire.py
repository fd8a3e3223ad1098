"""File history bytes made by the fast encoders are exactly what the codec generated from
protocol/ndmp3.x and ndmp4.x makes of the same entries, and every version's posts decode."""

from __future__ import annotations

import os
import stat as st
import threading

import pytest

from ndmpd.data.fh_wire import fh_encoder
from ndmpd.data.history import FhRecord, FileHistory
from ndmpd.engine.history import HistoryEntry
from ndmpd.wire import REQUEST, XdrError, protocol

U32 = 0xFFFFFFFF
KINDS = [st.S_IFDIR, st.S_IFREG, st.S_IFLNK, st.S_IFIFO, st.S_IFCHR, st.S_IFBLK, st.S_IFSOCK, 0]
# path, mode, uid, gid, size, mtime, atime, ctime, links, node, fh_info
ENTRIES = [
    (b"", st.S_IFDIR | 0o755, 0, 0, 0, 1_700_000_000, 1_700_000_001, 1_700_000_002, 3, 2, 0),
    (b"a", st.S_IFREG | 0o4644, 1000, 1000, 1, 0, 0, 0, 1, 257, 512),
    (b"ab", st.S_IFREG | 0o600, 2**32 + 5, 65534, 2**40, -1, 2**33, 5, 2**33, 2**63 + 1, 2**45),
    (b"abc", st.S_IFLNK | 0o777, 1, 2, 3, 4, 5, 6, 1, 7, 1024),
    (b"dir/abcd", st.S_IFIFO | 0o640, 1, 2, 0, 4, 5, 6, 1, 8, 1536),
    (b"dir/caf\xe9 \xff", st.S_IFCHR | 0o600, 0, 6, 0, 9, 9, 9, 1, 9, 2048),
    (b"dir/sub/" + b"x" * 300, st.S_IFBLK | 0o660, 0, 6, 0, 9, 9, 9, 1, 10, 2560),
    (b"dir/sock", st.S_IFSOCK | 0o755, 0, 0, 0, 9, 9, 9, 1, 11, 3072),
    (b"dir/odd", 0o644, 0, 0, 0, 9, 9, 9, 1, 12, 3584),         # no file type bits
]


def _codec_stat(version: int, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int, ctime: int,
                links: int) -> object:
    p = protocol(version)
    ftype = {st.S_IFDIR: p.const.FILE_DIR, st.S_IFREG: p.const.FILE_REG, st.S_IFLNK: p.const.FILE_SLINK,
             st.S_IFIFO: p.const.FILE_FIFO, st.S_IFCHR: p.const.FILE_CSPEC, st.S_IFBLK: p.const.FILE_BSPEC,
             st.S_IFSOCK: p.const.FILE_SOCK}.get(st.S_IFMT(mode), p.const.FILE_OTHER)
    return p.types.file_stat(0, p.const.FS_UNIX, ftype, mtime & U32, atime & U32, ctime & U32, uid & U32,
                             gid & U32, mode & 0o7777, size, links & U32)


def _name(version: int, name: bytes) -> object:
    p = protocol(version)
    return p.types.file_name(fs_type=p.const.FS_UNIX, unix_name=os.fsdecode(name))


@pytest.mark.parametrize("version", [3, 4])
def test_fast_entries_are_byte_identical_to_the_generated_codec(version: int) -> None:
    p, wire = protocol(version), fh_encoder(version)
    files, dirs, nodes = [], [], []
    for path, mode, uid, gid, size, mtime, atime, ctime, links, node, fh_info in ENTRIES:
        stat = _codec_stat(version, mode, uid, gid, size, mtime, atime, ctime, links)
        files.append(p.types.file([_name(version, b"/" + path)], [stat], node, fh_info))
        dirs.append(p.types.dir([_name(version, os.path.basename(path) or b".")], node, 2))
        nodes.append(p.types.node([stat], node, fh_info))
    expected = {
        "file": (p.const.FH_ADD_FILE, p.types.fh_add_file_post(files)),
        "dir": (p.const.FH_ADD_DIR, p.types.fh_add_dir_post(dirs)),
        "node": (p.const.FH_ADD_NODE, p.types.fh_add_node_post(nodes)),
    }
    made = {
        "file": wire.post("file", [wire.file(b"/" + e[0], *e[1:]) for e in ENTRIES]),
        "dir": wire.post("dir", [wire.dir(os.path.basename(e[0]) or b".", e[9], 2) for e in ENTRIES]),
        "node": wire.post("node", [wire.node(*e[1:]) for e in ENTRIES]),
    }
    for kind, (code, body) in expected.items():
        assert made[kind] == (code, p.encode_body(code, REQUEST, body)), kind
    assert wire.post("file", []) == (p.const.FH_ADD_FILE, p.encode_body(p.const.FH_ADD_FILE, REQUEST,
                                                                         p.types.fh_add_file_post([])))


def _row(path: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, atime: int, ctime: int, links: int,
         node: int, fh_info: int) -> HistoryEntry:
    """An entry as the dump reports it (``stat[:10]``: mode, ino, dev, nlink, uid, gid, size, times)."""
    return HistoryEntry(path, (mode, node, 0, links, uid, gid, size, atime, mtime, ctime), 2, fh_info)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_batches_are_byte_identical_to_entries_posted_one_by_one(version: int) -> None:
    wire = fh_encoder(version)
    rows = [_row(*e) for e in ENTRIES]
    sized = [e[:4] + ((0 if st.S_ISDIR(e[1]) else e[4]),) + e[5:] for e in ENTRIES]    # directories: no size
    assert wire.files(rows) == wire.post("file", [wire.file(b"/" + e[0], *e[1:]) for e in sized])
    assert wire.nodes(rows) == wire.post("node", [wire.node(*e[1:]) for e in sized])
    names = [wire.dir(os.path.basename(e[0]), e[9], 2) if e[0] else wire.dir(b".", e[9], e[9]) for e in ENTRIES]
    assert wire.dirs(rows) == wire.post("dir", names)
    assert wire.dirs(rows[1:], dot=2) == wire.post("dir", [wire.dir(b".", 2, 2)] + names[1:])
    assert wire.files([]) == wire.post("file", [])


def test_a_dump_without_its_root_first_gets_an_invented_dot() -> None:
    p, dma = protocol(4), Collector()
    history = FileHistory(4, "d", dma.send, threading.Event())
    for e in ENTRIES[1:4]:
        history.add_entry(_row(*e))
    history.finish()
    assert history.entries == 3
    dirs = p.decode_body(dma.posts[0][0], REQUEST, dma.posts[0][1], 0).dirs
    assert [(d.names[0].unix_name, d.node, d.parent) for d in dirs] == [
        (".", 2, 2), ("a", 257, 2), ("ab", ENTRIES[2][9], 2), ("abc", 7, 2)]


def test_flat_struct_takes_the_stat_layout_from_the_x_file() -> None:
    codec = protocol(4).codec
    assert codec.flat_struct("ndmp4_file_stat").format == ">IiiIIIIIIQI"
    with pytest.raises(XdrError):
        codec.flat_struct("ndmp4_file")          # variable-length fields


class Collector:
    def __init__(self) -> None:
        self.posts: list[tuple[int, bytes]] = []

    def send(self, code: int, body: bytes, on_sent) -> None:
        self.posts.append((code, body))
        on_sent()


def _history(version: int, kind: str) -> tuple[FileHistory, Collector]:
    dma = Collector()
    history = FileHistory(version, kind, dma.send, threading.Event())
    for path, mode, uid, gid, size, mtime, atime, ctime, links, node, fh_info in ENTRIES[:5]:
        history.add(FhRecord(path, mode, uid, gid, size, mtime, atime, ctime, links, node,
                             2 if path else node, fh_info))
    history.finish()
    return history, dma


def test_node_history_starts_with_dot_and_names_within_the_parent_v3() -> None:
    p = protocol(3)
    history, dma = _history(3, "d")
    assert history.entries == 5
    assert [code for code, _ in dma.posts] == [p.const.FH_ADD_DIR, p.const.FH_ADD_NODE]
    dirs = p.decode_body(dma.posts[0][0], REQUEST, dma.posts[0][1], 0).dirs
    assert [(d.names[0].unix_name, d.node, d.parent) for d in dirs] == [
        (".", 2, 2), ("a", 257, 2), ("ab", ENTRIES[2][9], 2), ("abc", 7, 2), ("abcd", 8, 2)]
    nodes = p.decode_body(dma.posts[1][0], REQUEST, dma.posts[1][1], 0).nodes
    assert [(n.node, n.fh_info, n.stats[0].size, n.stats[0].fattr) for n in nodes] == [
        (2, 0, 0, 0o755), (257, 512, 1, 0o4644), (ENTRIES[2][9], 2**45, 2**40, 0o600), (7, 1024, 3, 0o777),
        (8, 1536, 0, 0o640)]


def test_v2_history_is_unix_path_posts_with_fh_info_in_the_stat() -> None:
    p = protocol(2)
    _, dma = _history(2, "f")
    assert [code for code, _ in dma.posts] == [p.by_name["FH_ADD_UNIX_PATH"].code]
    paths = p.decode_body(dma.posts[0][0], REQUEST, dma.posts[0][1], 0).paths
    assert [(e.name, e.fstat.ftype, e.fstat.fh_info, e.fstat.uid) for e in paths] == [
        ("/", p.const.FILE_DIR, 0, 0), ("/a", p.const.FILE_REG, 512, 1000), ("/ab", p.const.FILE_REG, 2**45, 5),
        ("/abc", p.const.FILE_SLINK, 1024, 1), ("/dir/abcd", p.const.FILE_FIFO, 1536, 1)]


def test_a_stat_result_gives_whole_second_times_and_no_directory_size() -> None:
    dma = Collector()
    history = FileHistory(4, "f", dma.send, threading.Event())
    s = os.stat(".")
    history.add_stat(b"here", s, 1, 4096)
    history.finish()
    p = protocol(4)
    entry = p.decode_body(dma.posts[0][0], REQUEST, dma.posts[0][1], 0).files[0]
    stat = entry.stats[0]
    assert (entry.names[0].unix_name, entry.node, entry.fh_info) == ("/here", s.st_ino, 4096)
    assert (stat.ftype, stat.size, stat.mtime, stat.atime, stat.ctime, stat.links) == (
        p.const.FILE_DIR, 0, int(s.st_mtime), int(s.st_atime), int(s.st_ctime), s.st_nlink)
