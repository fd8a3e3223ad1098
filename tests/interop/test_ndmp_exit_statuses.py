"""Every ``ndmp`` command's error paths, as a script sees them (a real ndmpd process): the
exit status ``ndmp --help`` documents — 2 for a usage or configuration error (bad HOST
syntax, unknown host name, bad --slots, bad WHEN, PATH=NEWPATH with --as-of...), 1 for a job
that failed, a refused connection or a bad password — and one line on stderr, never a
traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.server_process import ServerProcess

from .conftest import PASSWORD, REPO, free_loopback_address, write_config

pytestmark = pytest.mark.interop

USAGE, FAILED = 2, 1

# (args with {spec} {dead} {catalog} filled in, status, what the line says, NDMP_PASSWORD or None: correct)
CASES = [
    # usage and configuration: 2
    (["restore", "--as-of", "now", "{spec}:/export/data", "/a=/b", "--to", "{spec}:/export/out/x"], USAGE,
     "ndmp restore: --as-of restores paths where they were", None),
    (["restore", "--as-of", "last tuesday", "{spec}:/export/data", "--to", "{spec}:/export/out/x"], USAGE,
     "ndmp restore: --as-of last tuesday: expected an ISO date", None),
    (["restore", "0123abcd", "/a=", "--to", "{spec}:/export/out/x"], USAGE, "expected PATH or PATH=NEWPATH", None),
    (["restore", "0123abcd", "--to", "{spec}:/export/out/x", "-E", "NOEQUALS"], USAGE, "-E NOEQUALS", None),
    (["restore", "0123abcd", "--to", "nosuch:/export/out/x"], USAGE, "nosuch: unknown host name", None),
    (["restore", "0123abcd", "--to", "{spec}"], USAGE, "expected HOST:NAME", None),
    (["backup", "ndmp@[::1:/export/data", "--tape", "{spec}:vtape0"], USAGE, "ndmp@[::1", None),
    (["backup", "nosuch:/export/data", "--tape", "{spec}:vtape0"], USAGE, "nosuch: unknown host name", None),
    (["backup", "{spec}:/export/data", "--tape", "{spec}:vtape0", "--library", "{spec}:changer", "--slots", "4-1"],
     USAGE, "--slots 4-1", None),
    (["backup", "{spec}:/export/data", "--tape", "{spec}:vtape0", "--slots", "one"], USAGE, "--slots one", None),
    (["backup", "{spec}:/export/data", "--tape", "{spec}:vtape0", "-E", "=x"], USAGE, "-E =x", None),
    (["backup", "{spec}:/export/data", "--tape", "{spec}:vtape0", "--level", "x"], USAGE, "--level", None),
    (["backup", "{spec}:/export/data", "--tape", "{spec}:vtape0", "--version", "5"], USAGE, "--version", None),
    (["info", "{spec}"], USAGE, "no password: set NDMP_PASSWORD", ""),
    (["info", "ndmp@127.0.0.1:99999"], USAGE, "99999", None),
    (["tape", "{spec}:vtape0", "label"], USAGE, "give the label NAME", None),
    (["library", "{spec}:changer", "move", "1"], USAGE, "library move: expected", None),
    (["prune"], USAGE, "give --keep-last N or --older-than AGE", None),
    (["prune", "--older-than", "soon"], USAGE, "--older-than soon", None),
    (["nosuchcommand"], USAGE, "invalid choice", None),
    # failures: 1
    (["info", "{dead}"], FAILED, "", None),
    (["info", "{spec}"], FAILED, "", "wrong password"),
    (["backup", "{spec}:/export/data", "--tape", "{spec}:vtape0"], FAILED, "", "wrong password"),
    (["backup", "{dead}:/export/data", "--tape", "{dead}:vtape0"], FAILED, "", None),
    (["backup", "{spec}:/no/such/volume", "--tape", "{spec}:vtape0"], FAILED, "/no/such/volume", None),
    (["backup", "{spec}:/export/data", "--tape", "{spec}:nodrive"], FAILED, "TAPE_OPEN nodrive: NO_DEVICE_ERR", None),
    (["restore", "0123abcd", "--to", "{spec}:/export/out/x"], FAILED, "0123abcd", None),
    (["restore", "--as-of", "now", "{spec}:/export/data", "--to", "{spec}:/export/out/x"], FAILED, "", None),
    (["tape", "{spec}:nodrive", "status"], FAILED, "TAPE_OPEN nodrive: NO_DEVICE_ERR", None),
    (["tape", "{dead}:vtape0", "status"], FAILED, "", None),
    (["ls", "0123abcd"], FAILED, "0123abcd", None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("exits")
    (root / "out").mkdir()
    host = free_loopback_address()
    extra = f'[[volume]]\nname = "/export/out"\npath = "{root / "out"}"\n'
    proc = ServerProcess(host, write_config(root, host, ["md5", "text"], extra=extra), root / "ndmpd.log", PASSWORD)
    yield host, root
    proc.stop()


@pytest.mark.parametrize("args,status,says,password", CASES, ids=[" ".join(c[0][:2]) + f"->{c[1]}" for c in CASES])
def test_each_error_is_its_status_and_one_line(server, args, status, says, password):
    host, root = server
    fill = {"spec": f"ndmp@{host}", "dead": f"ndmp@{free_loopback_address()}:10000",
            "catalog": str(root / "catalog.db")}
    argv = [a.format(**fill) for a in args]
    if argv[0] in ("backup", "restore", "ls", "prune"):
        argv += ["--catalog", fill["catalog"]]
    env = {**os.environ, "XDG_CONFIG_HOME": str(root), "XDG_DATA_HOME": str(root),
           "NDMP_PASSWORD": PASSWORD if password is None else password}
    result = subprocess.run([sys.executable, "-m", "ndmpd.dma", *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("ndmp"), lines
    assert says in lines[0], lines
