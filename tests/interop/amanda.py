"""Amanda as a second real client: Perl scripts on Amanda's own Device/Changer libraries
(Debian amanda-common + amanda-server) run against an ndmpd server process.

A test hands :func:`AmandaPeer.perl` a script body; ``use NdmpdAmanda;`` (tests/interop/amanda/)
gives it ``open_device``, ``write_random``, ``read_check`` and ``say_json``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

AMANDA_PERL = Path("/usr/lib/x86_64-linux-gnu/amanda/perl")
HELPERS = Path(__file__).parent / "amanda"


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


class AmandaPeer:
    """Runs Perl on Amanda's libraries against one ndmpd host."""

    def __init__(self, host: str, password: str, workdir: Path) -> None:
        self.host, self.password, self.workdir = host, password, workdir

    def perl(self, body: str, timeout: float = 120, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Runs ``body`` (NdmpdAmanda already loaded); with ``check``, a non-zero exit fails the test."""
        script = self.workdir / "amanda-test.pl"
        script.write_text(f"use lib '{HELPERS}';\nuse strict;\nuse warnings;\nuse NdmpdAmanda;\n"
                          "use Amanda::Device qw( :constants );\n" + body)
        environment = dict(os.environ, NDMPD_HOST=self.host, NDMPD_USER="ndmp", NDMPD_PASSWORD=self.password,
                           **(env or {}))
        done = subprocess.run(["perl", str(script)], capture_output=True, text=True, timeout=timeout,
                              env=environment, cwd=self.workdir)
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
