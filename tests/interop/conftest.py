"""Real peers: an ndmpd server process on 127.0.0.N:10000, ndmjob and tshark."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, free_loopback_address as find_loopback_address

REPO = Path(__file__).resolve().parents[2]
NDMJOB = Path("/usr/lib/amanda/ndmjob")
NDMJOB_WRAPPER = REPO.parent / "shared" / "tools" / "ndmjob"
PASSWORD = "s3cret-pw"


def free_loopback_address() -> str:
    """An address in 127/8 whose port 10000 is free (tshark only dissects port 10000)."""
    host = find_loopback_address()
    if host is None:
        pytest.skip("no free 127.0.0.N:10000")
    return host


def write_config(tmp: Path, host: str, auth: list[str], extra: str = "", server_extra: str = "") -> Path:
    """A server configuration on ``host``:10000 with one volume and one virtual drive;
    ``server_extra`` goes into [server], ``extra`` (more tables) at the end."""
    (tmp / "vol").mkdir(exist_ok=True)
    (tmp / "state").mkdir(exist_ok=True)
    config = tmp / "ndmpd.toml"
    config.write_text(f"""
[server]
listen = ["{host}:10000"]
state_dir = "{tmp / 'state'}"
auth = {auth!r}
log_level = "debug"
{server_extra}
[[user]]
name = "ndmp"
password = "{PASSWORD}"

[[volume]]
name = "/export/data"
path = "{tmp / 'vol'}"

[[tape]]
name = "vtape0"
path = "{tmp / 'state' / 'vtape0.img'}"
""".replace("'", '"') + extra)
    config.chmod(0o600)
    return config


OUT_VOLUME = """
[[volume]]
name = "/export/out"
path = "{path}"

[[tape]]
name = "vtape1"
path = "{state}/vtape1.img"
"""


@contextlib.contextmanager
def servers(tmp_path: Path, *sides: str, max_version: int = 4, extra: dict[str, str] | None = None):
    """One ndmpd per side on its own loopback address (its root tmp_path/SIDE: vol/ is
    /export/data, out/ is /export/out; drives vtape0 and vtape1; ``extra[SIDE]``: more config
    tables); each stopped after, unless the test already ended it."""
    started: list[ServerProcess] = []
    try:
        for side in sides:
            root = tmp_path / side
            (root / "out").mkdir(parents=True)
            host = free_loopback_address()
            config = write_config(root, host, ["md5", "text"],
                                  extra=OUT_VOLUME.format(path=root / "out", state=root / "state")
                                  + (extra or {}).get(side, ""),
                                  server_extra=f"max_version = {max_version}")
            started.append(ServerProcess(host, config, root / "ndmpd.log", PASSWORD))
        yield started
    finally:
        for server in started:
            if server.proc.poll() is None:
                server.stop()


LIBRARY = """
[[tape]]
name = "ltape0"
capacity = "{capacity}"
early_warning = "{early_warning}"

[[changer]]
name = "vlib0"
path = "{path}"
drives = ["ltape0"]
slots = 4
import_export = 1
"""


def library_tables(path: Path, *, capacity: str = "1MiB", early_warning: str = "64KiB") -> str:
    """Config tables for a virtual library vlib0 at ``path``: one drive ltape0 whose cartridges
    hold ``capacity``, four slots, one import/export port."""
    return LIBRARY.format(path=path, capacity=capacity, early_warning=early_warning)


@pytest.fixture
def ndmjob() -> Path:
    if not NDMJOB.exists():
        pytest.skip("ndmjob not installed (apt-get install amanda-common)")
    return NDMJOB


@pytest.fixture
def server_factory(tmp_path):
    started: list[ServerProcess] = []

    def start(auth: list[str] = ["md5", "text"], extra: str = "") -> ServerProcess:
        host = free_loopback_address()
        server = ServerProcess(host, write_config(tmp_path, host, auth, extra), tmp_path / "ndmpd.log", PASSWORD)
        started.append(server)
        return server
    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()


FIXES_SOURCE = Path(__file__).parent.parent / "tools" / "ndmjob-fixes.c"


@pytest.fixture(scope="session")
def ndmjob_suite(tmp_path_factory):
    """Runs an ndmjob conformance series through the shared wrapper plus our client fixes
    (tests/tools/ndmjob-fixes.c); returns run(series, agent, version, *args)."""
    if not NDMJOB.exists():
        pytest.skip("ndmjob not installed (apt-get install amanda-common)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler for the ndmjob client fixes")
    shim = tmp_path_factory.mktemp("fixes") / "ndmjob-fixes.so"
    subprocess.run([cc, "-std=gnu11", "-shared", "-fPIC", "-O2", "-o", str(shim), str(FIXES_SOURCE)], check=True)

    def run_series(series: str, agent: str, version: str, *args: str, timeout: int = 300):
        env = dict(os.environ, LD_PRELOAD=str(shim), NDMJOB_FIX_TAPE_VERSION=version)
        program = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB     # our shim has its g_malloc fix too
        return subprocess.run([str(program), "-v", "-o", series, "-T", agent, *args],
                              capture_output=True, text=True, timeout=timeout, env=env)
    return run_series


@contextlib.contextmanager
def ndmjob_daemon(cwd: Path):
    """``ndmjob -o daemon`` (ndmjob's own agents, user ndmp, password ndmp) on 127.0.0.1:<free
    port>, started in ``cwd`` and waited for; yields the port, kills its process group after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    program = NDMJOB_WRAPPER if NDMJOB_WRAPPER.exists() else NDMJOB
    proc = subprocess.Popen([str(program), "-o", "daemon", "-p", str(port)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run(cmd: list[str], timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tshark_capture(tmp_path):
    """Start a loopback capture of port 10000 for some hosts; yields a stop() returning the pcap path."""
    tshark = shutil.which("tshark")
    if not tshark:
        pytest.skip("tshark not installed (apt-get install tshark)")
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    procs = []

    def start(*hosts: str):
        pcap = tmp_path / "capture.pcap"
        among = " or ".join(f"host {host}" for host in hosts)
        proc = subprocess.Popen([tshark, "-i", "lo", "-f", f"tcp port 10000 and ({among})", "-w", str(pcap)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        line = b""
        deadline = time.monotonic() + 20
        while b"Capturing on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                pytest.skip("tshark cannot capture here")
        time.sleep(0.5)

        def stop() -> Path:
            time.sleep(1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)
            return pcap
        return stop
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


from tests.interop.amanda import amanda  # noqa: E402,F401  (fixture for test_amanda_*.py)


def drive_is_free(host: str, drive: str, port: int = 10000) -> bool:
    """A new session can TAPE_OPEN ``drive``: no session still holds it. (A new session's DATA
    and MOVER are always IDLE, whatever a job left: a job reports its own, ``states`` in its
    summary; the drive is shared, so this check does prove a job let it go.)"""
    import asyncio
    from ndmpd.dma.agent import Agent
    from ndmpd.dma.errors import NdmpReplyError
    from ndmpd.wire import C

    async def ask() -> bool:
        async with Agent.connect(host, port, user="ndmp", password=PASSWORD, timeout=10) as agent:
            try:
                await agent.call("TAPE_OPEN", device=drive, mode=C.TAPE_READ_MODE)
            except NdmpReplyError:
                return False
            await agent.call("TAPE_CLOSE")
            return True
    return asyncio.run(ask())
