"""The DMA library and ``ndmp info`` against another vendor's server: ndmjob's daemon."""

from __future__ import annotations

import asyncio
import json

import pytest

from ndmpd.dma.agent import Agent
from ndmpd.dma.errors import NdmpAuthError
from ndmpd.wire import C
from tests.interop.conftest import NDMJOB, ndmjob_daemon
from tests.interop.test_ndmp_info import ndmp

pytestmark = pytest.mark.interop


@pytest.fixture
def daemon(tmp_path):
    """``ndmjob -o daemon`` on 127.0.0.1:<free port> (user ndmp, password ndmp)."""
    if not NDMJOB.exists():
        pytest.skip("ndmjob not installed (apt-get install amanda-common)")
    with ndmjob_daemon(tmp_path) as port:
        yield port


@pytest.mark.parametrize("versions", [(4, 3), (3,), (2,)])
def test_agent_drives_ndmjobs_tape_agent(daemon, tmp_path, versions):
    tape = tmp_path / "tape"
    tape.touch()

    async def go():
        async with Agent.connect("127.0.0.1", daemon, user="ndmp", password="ndmp", versions=versions,
                                 timeout=10) as agent:
            host = await agent.call("CONFIG_GET_HOST_INFO")
            await agent.call("TAPE_OPEN", device=str(tape), mode=C.TAPE_RDWR_MODE)
            state = await agent.call("TAPE_GET_STATE")
            await agent.call("TAPE_CLOSE")
            return agent.version, agent.auth, host.os_type, state.file_num
    version, auth, os_type, file_num = asyncio.run(asyncio.wait_for(go(), 30))
    assert (version, auth, file_num) == (versions[0], "md5", 0) and "NDMJOB" in os_type


def test_a_wrong_password_is_refused_by_ndmjob_too(daemon):
    with pytest.raises(NdmpAuthError, match="authentication failed"):
        asyncio.run(asyncio.wait_for(Agent.connect("127.0.0.1", daemon, user="ndmp", password="bad",
                                                   timeout=10).__aenter__(), 30))


def test_ndmp_info_on_ndmjobs_daemon(daemon, tmp_path):
    result = ndmp("info", f"ndmp@127.0.0.1:{daemon}", "--json", env={"NDMP_PASSWORD": "ndmp"}, home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["version"] == 4 and "md5" in report["server_info"]["auth_types"]
    v2 = json.loads(ndmp("info", f"ndmp@127.0.0.1:{daemon}", "--json", "--version", "2",
                         env={"NDMP_PASSWORD": "ndmp"}, home=tmp_path).stdout)
    assert v2["version"] == 2 and v2["host_info"]["hostname"]      # (its v2 BUTYPE_ATTR refuses every name)
