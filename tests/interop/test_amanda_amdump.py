"""A whole Amanda run as an admin does it: amlabel, amcheck, amdump of a GNU tar DLE
(amgtar, auth "local") to a chg-ndmp library in a real ndmpd, the dump split into parts that
span two cartridges at the early warning, then amfetchdump and tar -x of the result, compared with the original tree. (amrecover is
left out: Amanda 3.5.1's amidxtaped dies on amrecover's DAR reply, "Can't locate object method
new via package Amanda::FetchDump::Message", Amidxtaped.pm notify_start_backup.)

Amanda's client side (amandad, sendbackup, runtar) refuses any user but its compiled-in
CLIENT_LOGIN (``backup`` on Debian), so the tools run as that user with a config directory it
owns, reached as ``CONFIG_DIR/NAME`` (amdump and amcheck hand the config's name to the programs
they start, so the ``.`` name of the other Amanda tests does not carry). The dump goes through a
small holding disk: Amanda 3.5.1's taper cannot send a dump straight from the dumper to a
DirectTCP device (its SHM_RING -> DIRECTTCP_LISTEN glue aborts, element-glue.c setup_impl), and
the NDMP device is always DirectTCP."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.engine_helpers import build_every_case
from tests.interop.amanda import amanda_build, write_amanda_conf
from tests.interop.conftest import run
from tests.trees import describe, differences

CAPACITY_MIB, EARLY_WARNING_KIB, PART_KIB = 2, 512, 256
LIBRARY = f"""
[[tape]]
name = "ltape0"
capacity = "{CAPACITY_MIB}MiB"
early_warning = "{EARLY_WARNING_KIB}KiB"

[[changer]]
name = "vlib0"
path = "{{path}}"
drives = ["ltape0"]
slots = 4
import_export = 1
"""
LABELS = ["TEST-01", "TEST-02"]
AMGTAR = Path("/usr/lib/amanda/application/amgtar")


def amdump_setup(directory: Path, holding: Path) -> str:
    """What the amdump run adds to the shared amanda.conf: two cartridges a run, a holding disk,
    and dumptype ``ndmpd-gtar`` (amgtar with ACLs and xattrs, no compression, local auth)."""
    return f"""runtapes 2
dumpcycle 0
tapecycle 4
define holdingdisk hd {{
    directory "{holding}"
    use 32 mbytes
    chunksize 0
}}
holdingdisk "hd"
define application-tool app-amgtar {{
    plugin "amgtar"
    property "GNUTAR-LISTDIR" "{directory / 'gnutar-lists'}"
    property "ACLS" "YES"
    property "XATTRS" "YES"
}}
define dumptype ndmpd-gtar {{
    program "APPLICATION"
    application "app-amgtar"
    auth "local"
    compress none
    index yes
    holdingdisk required
    record no
    strategy noinc
}}
"""


def build_tree(root: Path) -> Path:
    """Every kind of file, plus incompressible data enough for several parts on two cartridges."""
    build_every_case(root)
    (root / "big").mkdir()
    (root / "big" / "one.bin").write_bytes(os.urandom(800 * 1024))
    (root / "big" / "two.bin").write_bytes(os.urandom(700 * 1024 + 123))
    os.chmod(root, 0o755)
    return root


@pytest.fixture
def amanda_run(server_factory, amanda, tmp_path):
    """A library vlib0 with cartridges BC0001-4 in ndmpd, and an Amanda config NAME owned by the
    client user (backup) in a fresh directory, linked as CONFIG_DIR/NAME; yields (server, peer,
    config dir, name, user, the tree to dump)."""
    build = amanda_build()
    user, config_root = build.get("CLIENT_LOGIN"), Path(build.get("CONFIG_DIR", "/etc/amanda"))
    if not (shutil.which("amdump", path="/usr/sbin:/usr/bin") and AMGTAR.exists()):
        pytest.skip("amdump and amgtar are not installed (apt-get install amanda-server amanda-client)")
    if not user:
        pytest.skip("cannot tell Amanda's client user (amadmin x version shows no CLIENT_LOGIN)")
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        pytest.skip(f"Amanda's client user {user} does not exist")
    as_user = None if os.geteuid() == account.pw_uid else user
    if as_user and os.geteuid() != 0:
        pytest.skip(f"amdump must run as Amanda's client user {user}: run the tests as root or as {user}")
    if not os.access(config_root, os.W_OK) and os.geteuid() != 0:
        pytest.skip(f"cannot link a config into {config_root}")
    server = server_factory(extra=LIBRARY.format(path=tmp_path / "lib"))
    done = run([sys.executable, "-m", "ndmpd", "library", "--config", str(server.config), "create", "vlib0",
                "BC0001", "BC0002", "BC0003", "BC0004"])
    assert done.returncode == 0, done.stderr
    work = Path(tempfile.mkdtemp(prefix="ndmpd-amdump-"))    # the pytest tmp tree is root-only
    name = work.name
    link = config_root / name
    try:
        directory, holding = work / "config", work / "holding"
        holding.mkdir()
        for sub in ["gnutar-lists", "log"]:
            (directory / sub).mkdir(parents=True)
        write_amanda_conf(directory, server.host, server.password, "vlib0", {0: "ltape0"},
                          extra=amdump_setup(directory, holding), dumpuser=user,
                          tapetype=f"length {CAPACITY_MIB} mbytes\n    part-size {PART_KIB} kbytes\n"
                                   "    part-cache-type none")
        tree = build_tree(work / "data")
        (directory / "disklist").write_text(f"localhost {tree} ndmpd-gtar\n")
        for path in [work, directory, holding, *directory.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
        link.symlink_to(directory)
        yield server, amanda(server), directory, name, as_user, tree
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def taper_parts(log: str) -> list[tuple[str, int, int]]:
    """(label, file on the cartridge, part number) of each PART line of amdump's log."""
    return [(label, int(file), int(part)) for label, file, part in
            re.findall(r'^PART taper (?:"[^"]*" )*(\S+) (\d+) \S+ \S+ \d+ (\d+)/', log, re.M)]


def test_amdump_spans_two_cartridges_and_amfetchdump_restores_the_tree(amanda_run, tmp_path):
    server, peer, directory, name, user, tree = amanda_run

    def tool(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return peer.tool(directory, args[0], *args[1:], config=name, user=user, **kwargs)

    for slot, label in enumerate(LABELS, start=1):
        done = tool("amlabel", label, "slot", str(slot))
        assert done.returncode == 0, done.stdout + done.stderr
    done = tool("amcheck")
    assert done.returncode == 0 and "0 problems found" in done.stdout, done.stdout + done.stderr
    assert f"Will write to volume '{LABELS[0]}'" in done.stdout, done.stdout

    done = tool("amdump", timeout=60)
    log = (directory / "log" / "log").read_text()
    assert done.returncode == 0, f"amdump exit {done.returncode}\n{log}"
    parts = taper_parts(log)
    assert [part for _, _, part in parts] == list(range(1, len(parts) + 1)), log
    assert [label for label, _, _ in parts] == sorted(label for label, _, _ in parts), log
    on = {label: [file for other, file, _ in parts if other == label] for label in LABELS}
    assert len(on[LABELS[0]]) >= 2 and len(on[LABELS[1]]) >= 1, log        # split, and across two
    assert all(files == list(range(1, len(files) + 1)) for files in on.values()), log
    assert re.search(rf"^DONE taper .* {re.escape(str(tree))} \d+ {len(parts)} 0 .*\[sec", log, re.M), log
    for label in LABELS:
        assert re.search(rf"^INFO taper tape {label} kb \d+ fm \d+ \[OK\]", log, re.M), log

    # -p: the parts reassembled into one stream through one DirectTCP connection whose mover
    # spans both cartridges (at the change Amanda's new Device sets a window past the bytes
    # already sent, see test_mover_transfer's window tests); tar stops at its end-of-archive,
    # the rest is the last record's padding
    stream = tmp_path / "restored.tar"
    with open(stream, "wb") as out:
        done = tool("amfetchdump", "-a", "-p", "localhost", str(tree), stdout=out, timeout=60)
    assert done.returncode == 0, done.stderr
    dumped = int(re.search(r"^DONE taper .*\[sec \S+ bytes (\d+) ", log, re.M)[1])
    data = stream.read_bytes()
    assert dumped <= len(data) < dumped + 65536 and not data[dumped:].strip(b"\0"), (dumped, len(data))
    restored = tmp_path / "restored"
    restored.mkdir()
    done = run(["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf",
                stream, "-C", restored])
    assert done.returncode == 0, done.stderr
    assert differences(describe(tree), describe(restored)) == []
