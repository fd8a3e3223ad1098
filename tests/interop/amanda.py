"""Amanda as a second real client: Perl scripts on Amanda's own Device/Changer libraries
(Debian amanda-common + amanda-server) run against an ndmpd server process.

A test hands :func:`AmandaPeer.perl` a script body; ``use NdmpdAmanda;`` (tests/interop/amanda/)
gives it ``open_device``, ``open_changer``, ``wait_for``, ``write_random``, ``read_check`` and
``say_json``; :func:`write_amanda_conf` writes the amanda.conf the changer and the
amanda-server tools (:meth:`AmandaPeer.tool`) need."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

AMANDA_PERL = Path("/usr/lib/x86_64-linux-gnu/amanda/perl")
HELPERS = Path(__file__).parent / "amanda"


def write_amanda_conf(directory: Path, host: str, password: str, changer: str, drives: dict[int, str],
                      extra: str = "", dumpuser: str | None = None, tapetype: str = "length 16 mbytes") -> Path:
    """A minimal amanda.conf in ``directory`` for the amanda-server tools and Amanda::Changer:
    changer ``robot`` is ``chg-ndmp:HOST:10000@CHANGER`` with Amanda's drive numbers mapped to
    ``ndmp:HOST:10000@DRIVE`` (``tape-device``), labels ``TEST-NN``, state files beside it.
    ``dumpuser``: by default whoever runs the tests (Amanda's server tools insist on running as
    it; amdump's client side insists on Amanda's client user, see :func:`amanda_build`).
    ``tapetype``: the body of tapetype ``ndmpd-vtape`` (length, part-size, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tapelist").touch()
    devices = "\n".join(f'    property {"append " if i else ""}"tape-device" "{number}=ndmp:{host}:10000@{drive}"'
                        for i, (number, drive) in enumerate(sorted(drives.items())))
    conf = directory / "amanda.conf"
    conf.write_text(f"""org "ndmpd-test"
dumpuser "{dumpuser or pwd.getpwuid(os.getuid()).pw_name}"
mailto ""
tapelist "tapelist"
infofile "curinfo"
logdir "log"
indexdir "index"
labelstr "^TEST-[0-9][0-9]*$"
define tapetype ndmpd-vtape {{
    {tapetype}
}}
tapetype "ndmpd-vtape"
tpchanger "robot"
define changer robot {{
    tpchanger "chg-ndmp:{host}:10000@{changer}"
    changerfile "chg-state"
    property "ndmp-username" "ndmp"
    property "ndmp-password" "{password}"
{devices}
}}
{extra}""")
    return conf


def amanda_missing() -> str | None:
    """Why Amanda's Perl device layer cannot run here, or None."""
    if not shutil.which("perl"):
        return "perl not installed"
    if not (AMANDA_PERL / "Amanda" / "Device.pm").exists():
        return "Amanda's Perl libraries not installed (apt-get install amanda-common)"
    probe = subprocess.run(["perl", f"-I{AMANDA_PERL}", "-MAmanda::Device", "-MAmanda::XferServer", "-e1"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"Amanda's Perl libraries do not load ({probe.stderr.strip().splitlines()[0]}; " \
               "apt-get install amanda-server libencode-locale-perl)"
    return None


def amanda_build() -> dict[str, str]:
    """Amanda's compiled-in settings (CLIENT_LOGIN, CONFIG_DIR, AMANDA_DBGDIR, ...) from
    ``amadmin x version``; empty when amadmin is missing."""
    program = shutil.which("amadmin", path="/usr/sbin:/usr/bin")
    if not program:
        return {}
    done = subprocess.run([program, "x", "version"], capture_output=True, text=True, timeout=30)
    return dict(re.findall(r'(\w+)="([^"]*)"', done.stdout))


class AmandaPeer:
    """Runs Perl on Amanda's libraries against one ndmpd host."""

    def __init__(self, host: str, password: str, workdir: Path) -> None:
        self.host, self.password, self.workdir = host, password, workdir

    def perl(self, body: str, timeout: float = 120, check: bool = True,
             env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Runs ``body`` (NdmpdAmanda already loaded); with ``check``, a non-zero exit fails the test.
        ``cwd``: where it runs (a directory with an amanda.conf for ``open_changer``)."""
        return self._finish(subprocess.run(["perl", str(self.script(body))], capture_output=True, text=True,
                                           timeout=timeout, env=self.environment(env), cwd=cwd or self.workdir),
                            check)

    def start_perl(self, body: str, cwd: Path | None = None) -> subprocess.Popen:
        """Starts ``body`` in the background (stdin and stdout are pipes); the caller stops it."""
        return subprocess.Popen(["perl", str(self.script(body, "amanda-background.pl"))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.environment(None), cwd=cwd or self.workdir)

    def script(self, body: str, name: str = "amanda-test.pl") -> Path:
        script = self.workdir / name
        script.write_text(f"use lib '{HELPERS}';\nuse strict;\nuse warnings;\nuse NdmpdAmanda;\n"
                          "use Amanda::Device qw( :constants );\n" + body)
        return script

    def environment(self, env: dict[str, str] | None) -> dict[str, str]:
        return dict(os.environ, NDMPD_HOST=self.host, NDMPD_USER="ndmp", NDMPD_PASSWORD=self.password, **(env or {}))

    def tool(self, config_dir: Path, *args: str, timeout: float = 120, config: str = ".",
             user: str | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
        """Runs an amanda-server tool (``amtape``, ``amlabel``, ...) on the amanda.conf in ``config_dir``
        (config name ".": Amanda reads the one in its working directory; tools that start others,
        amcheck and amdump, need a real ``config`` name under Amanda's CONFIG_DIR). ``user``: run
        as that user (needs root). A tool that asks the operator to insert a volume reads end of
        file and gives up."""
        program = shutil.which(args[0], path="/usr/sbin:/usr/bin") or args[0]
        env, identity = self.environment(None), {}
        if user:
            account = pwd.getpwnam(user)
            env.update(HOME=account.pw_dir, USER=user, LOGNAME=user)
            identity = dict(user=account.pw_uid, group=account.pw_gid,
                            extra_groups=os.getgrouplist(user, account.pw_gid))
        return subprocess.run([program, config, *args[1:]], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, cwd=config_dir, env=env, stdin=subprocess.DEVNULL, **identity)

    def _finish(self, done: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
        if check:
            assert done.returncode == 0, f"Amanda script failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done

    def results(self, done: subprocess.CompletedProcess) -> list[dict]:
        """The JSON lines a script printed with ``say_json``."""
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def amanda(tmp_path):
    """A factory: ``amanda(server)`` gives an :class:`AmandaPeer` for that ndmpd server."""
    reason = amanda_missing()
    if reason:
        pytest.skip(reason)
    return lambda server: AmandaPeer(server.host, server.password, tmp_path)
