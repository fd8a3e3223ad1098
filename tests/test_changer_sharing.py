"""A changer is open in several sessions at once, as a real one behind ``sg``; its CDBs run
one at a time; a tape drive stays with one session."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from ndmpd.changer.library import LibraryError
from ndmpd.changer.registry import ChangerRegistry
from ndmpd.changer.sense import CdbResult
from ndmpd.config import build
from ndmpd.devices import cartridge
from ndmpd.devices.registry import DriveRegistry
from ndmpd.wire import C

from .server_thread import ServerThread

from .test_scsi_service import INQUIRY, ctx  # noqa: F401  (the fixture)
from .test_tape_service import err, open_session

READ_ELEMENT_STATUS = bytes([0xB8, 0x10, 0, 0, 0xFF, 0xFF, 0, 0, 0x10, 0, 0, 0])


def cdb(dma, command: bytes, datain_len: int = 0):
    return dma.call("SCSI_EXECUTE_CDB", flags=C.SCSI_DATA_IN if datain_len else 0, timeout=1000,
                    datain_len=datain_len, cdb=command, dataout=b"")


def move(dma, source: int, destination: int):
    return cdb(dma, bytes([0xA5, 0]) + struct.pack(">HHH", 0, source, destination) + bytes(4))


def full(reply, address: int) -> bool:
    """Whether READ ELEMENT STATUS shows element ``address`` full."""
    data = reply.body.datain
    at = 8
    while at < len(data):
        size, length = struct.unpack_from(">H", data, at + 2)[0], int.from_bytes(data[at + 5:at + 8], "big")
        for start in range(at + 8, at + 8 + length, size):
            if struct.unpack_from(">H", data, start)[0] == address:
                return bool(data[start + 2] & 1)
        at += 8 + length
    raise AssertionError(f"no element {address}")


def test_a_second_session_opens_the_changer_held_by_the_first_and_sees_its_moves(ctx):
    library = ctx.changers.libraries["vlib0"]
    cartridge.create(library.cartridge_path("S1"), 1 << 20, None, "S1")
    library.place("S1", 1024, (2,))
    holder, holder_dma = open_session(ctx)
    inventory, inventory_dma = open_session(ctx)
    assert err(holder_dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR
    assert err(inventory_dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR     # DEVICE_BUSY_ERR before
    assert move(holder_dma, 1024, 1025).body.status == 0
    status = cdb(inventory_dma, READ_ELEMENT_STATUS, 4096)
    assert status.body.status == 0 and full(status, 1025) and not full(status, 1024)
    assert err(holder_dma.call("SCSI_CLOSE")) == C.NO_ERR
    assert move(inventory_dma, 1025, 1024).body.status == 0                     # still open for the other
    inventory.teardown()                                                          # a lost connection closes it
    assert ctx.changers.open_count("vlib0") == 0


def test_each_session_keeps_its_own_sense_on_a_shared_changer(ctx):
    first, first_dma = open_session(ctx)
    second, second_dma = open_session(ctx)
    for dma in (first_dma, second_dma):
        assert err(dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR
    assert move(first_dma, 1024, 1025).body.status == 2                        # slot 1024 is empty
    assert cdb(second_dma, INQUIRY, 96).body.status == 0                        # another initiator's command
    sense = cdb(first_dma, bytes([0x03, 0, 0, 0, 18, 0]), 18)
    assert sense.body.status == 0 and sense.body.datain[12:14] == bytes([0x3B, 0x0E])   # source empty


def test_a_tape_drive_stays_with_one_session(ctx):
    first, first_dma = open_session(ctx)
    second, second_dma = open_session(ctx)
    assert err(first_dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == C.NO_ERR
    assert err(second_dma.call("TAPE_OPEN", device="vtape0", mode=C.TAPE_READ_MODE)) == C.DEVICE_BUSY_ERR


class SlowChanger:
    """A real changer's stand-in: each command takes a while; counts how many run at once."""

    def __init__(self) -> None:
        self.running = self.most = self.opened = self.closed = 0
        self.count = threading.Lock()

    def __call__(self, path: str) -> "SlowChanger":
        self.opened += 1
        return self

    def execute(self, cdb: bytes, datain_len: int = 0, data_out: bytes = b"", timeout_ms: int = 0) -> CdbResult:
        with self.count:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.01)
        with self.count:
            self.running -= 1
        return CdbResult(0, b"")

    def reset(self, bus: bool = False) -> None:
        self.execute(b"")

    def address(self) -> tuple[int, int, int]:
        return 0, 3, 0

    def close(self) -> None:
        self.closed += 1


def test_a_real_changer_opens_once_for_all_sessions_and_runs_their_cdbs_one_at_a_time(tmp_path):
    config = build({"server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state")},
                    "user": [{"name": "ndmp", "password": "secret"}],
                    "changer": [{"name": "robot", "kind": "sg", "path": "/dev/null"}]}, "<test>", tmp_path)
    fake = SlowChanger()
    registry = ChangerRegistry(config.changers, DriveRegistry(()), open_sg=fake)
    owners = [object() for _ in range(4)]
    handles = [registry.acquire("robot", owner) for owner in owners]
    assert fake.opened == 1 and registry.open_count("robot") == 4
    threads = [threading.Thread(target=lambda h=h: [h.execute(bytes(6)) for _ in range(10)]) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert fake.most == 1
    for owner in owners[:3]:
        registry.release("robot", owner)
    assert fake.closed == 0                                       # one opener is left
    registry.release("robot", owners[3])
    assert fake.closed == 1 and registry.open_count("robot") == 0
    registry.acquire("robot", owners[0])
    assert fake.opened == 2                                       # opened again for the next session


PREVENT, ALLOW = bytes([0x1E, 0, 0, 0, 1, 0]), bytes([0x1E, 0, 0, 0, 0, 0])


def test_removal_stays_prevented_while_any_session_prevents_it(ctx):
    library = ctx.changers.libraries["vlib0"]
    cartridge.create(library.cartridge_path("P1"), 1 << 20, None, "P1")
    library.place("P1", None, (3,))                                               # in the mail slot
    first, first_dma = open_session(ctx)
    second, second_dma = open_session(ctx)
    for dma in (first_dma, second_dma):
        assert err(dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR
    assert cdb(first_dma, PREVENT).body.status == 0
    assert cdb(second_dma, ALLOW).body.status == 0                                # only its own lock
    with pytest.raises(LibraryError, match="removal prevented"):
        library.remove("P1")
    first.teardown()                                                              # its session ends: so does its lock
    assert library.remove("P1") == "P1"


def test_a_restart_forgets_removal_locks_of_sessions_that_are_gone(ctx, tmp_path):
    library = ctx.changers.libraries["vlib0"]
    cartridge.create(library.cartridge_path("P2"), 1 << 20, None, "P2")
    library.place("P2", None, (3,))
    session, dma = open_session(ctx)
    assert err(dma.call("SCSI_OPEN", device="vlib0")) == C.NO_ERR
    assert cdb(dma, PREVENT).body.status == 0
    ctx.changers.start()                                                          # a reload: the session lives on
    with pytest.raises(LibraryError, match="removal prevented"):
        library.remove("P2")
    restarted = ChangerRegistry(ctx.config.changers, ctx.drives)                  # the server ran again
    restarted.start()
    assert library.remove("P2") == "P2"


class PathChangers:
    """Opens a :class:`SlowChanger` per path and remembers which path each came from."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, SlowChanger]] = []

    def __call__(self, path: str) -> SlowChanger:
        device = SlowChanger()
        self.opened.append((path, device))
        return device


def sg_config(tmp_path, path: str, listen: str = "127.0.0.1:10000"):
    return build({"server": {"listen": [listen], "state_dir": str(tmp_path / "state")},
                  "user": [{"name": "ndmp", "password": "secret"}],
                  "changer": [{"name": "robot", "kind": "sg", "path": path}]}, "<test>", tmp_path)


def test_a_reload_that_moves_a_real_changer_opens_the_new_device_for_new_sessions(tmp_path):
    """A session keeps the device it opened; a session after the reload gets the new path's, not
    the old one's; each closes when its last opener goes."""
    opener = PathChangers()
    before = ChangerRegistry(sg_config(tmp_path, "/dev/null").changers, DriveRegistry(()), open_sg=opener)
    old_session, new_session = object(), object()
    before.acquire("robot", old_session)
    after = before.reconfigured(sg_config(tmp_path, "/dev/zero").changers, DriveRegistry(()))
    after.start()
    after.acquire("robot", new_session).execute(bytes(6))
    assert [path for path, _ in opener.opened] == ["/dev/null", "/dev/zero"]
    (_, old_device), (_, new_device) = opener.opened
    before.release("robot", old_session)
    assert (old_device.closed, new_device.closed) == (1, 0)                    # the new one is still open
    after.release("robot", new_session)
    assert new_device.closed == 1


class GatedChanger(SlowChanger):
    """A real changer whose command (a robot's MOVE MEDIUM takes seconds) runs until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.started = threading.Event(), threading.Event()

    def execute(self, cdb: bytes, datain_len: int = 0, data_out: bytes = b"", timeout_ms: int = 0) -> CdbResult:
        self.started.set()
        self.gate.wait(10)
        return CdbResult(0, b"")


def test_the_changer_state_is_answered_while_another_session_moves_a_cartridge(tmp_path):
    """SCSI_GET_STATE and SCSI_SET_TARGET only identify the device: they wait neither for
    another session's command nor hold up the server meanwhile."""
    config = sg_config(tmp_path, "/dev/null", listen="127.0.0.1:0")
    changer = GatedChanger()
    server = ServerThread(config)
    server.ctx.changers = ChangerRegistry(config.changers, server.ctx.drives, open_sg=changer)
    try:
        with server.client(version=3) as mover_dma, server.client(version=3) as asking:
            for dma in (mover_dma, asking):
                dma.login("ndmp", "secret")
                dma.call("SCSI_OPEN", device="robot")
            moving = threading.Thread(target=lambda: mover_dma.call(
                "SCSI_EXECUTE_CDB", flags=0, timeout=60000, datain_len=0, cdb=bytes(12), dataout=b""))
            moving.start()
            assert changer.started.wait(10)
            start = time.monotonic()
            state = asking.call("SCSI_GET_STATE")
            asking.call("SCSI_SET_TARGET", device="robot", target_controller=0, target_id=3, target_lun=0)
            answered = time.monotonic() - start
            changer.gate.set()
            moving.join(30)
        assert (state.target_controller, state.target_id, state.target_lun) == (0, 3, 0)
        assert answered < 5, f"SCSI_GET_STATE waited {answered:.1f} s for the other session's command"
    finally:
        changer.gate.set()
        server.stop()


def library_config(tmp_path, slots: int):
    return build({"server": {"listen": ["127.0.0.1:10000"], "state_dir": str(tmp_path / "state")},
                  "user": [{"name": "ndmp", "password": "secret"}],
                  "tape": [{"name": "ltape0"}],
                  "changer": [{"name": "vlib0", "path": str(tmp_path / "lib"), "drives": ["ltape0"], "slots": slots}]},
                 "<test>", tmp_path)


def move_cdb(source: int, destination: int) -> bytes:
    return bytes([0xA5, 0]) + struct.pack(">HHH", 0, source, destination) + bytes(4)


def test_a_session_of_the_old_geometry_loses_no_cartridge_that_a_reload_added_slots_for(tmp_path):
    """A reload grows a library while a session has it open: that session's moves (in the
    slots it knows) keep the cartridges the new sessions put in the new slots."""
    first = library_config(tmp_path, 2)
    before = ChangerRegistry(first.changers, DriveRegistry(first.tapes))
    library = before.libraries["vlib0"]
    library.directory.mkdir()
    for barcode in ("G1", "G2"):
        cartridge.create(library.cartridge_path(barcode), 1 << 20, None, barcode)
        library.place(barcode, None, (2,))                                       # slots 1024, 1025
    old = before.acquire("vlib0", "old session")
    second = library_config(tmp_path, 4)
    after = before.reconfigured(second.changers, DriveRegistry(second.tapes))
    after.start()
    new = after.acquire("vlib0", "new session")
    assert new.execute(move_cdb(1025, 1027)).status == 0                         # into a new slot
    assert old.execute(move_cdb(1024, 1025)).status == 0                         # the old geometry moves
    with after.libraries["vlib0"].state() as state:
        assert {e.address: e.barcode for e in state.elements.values() if e.barcode} == {1025: "G1", 1027: "G2"}
