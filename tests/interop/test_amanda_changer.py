"""Amanda's NDMP changer (``chg-ndmp``, Amanda::Changer) and the amanda-server tools
(``amtape``, ``amlabel``) driving a virtual library in a real ndmpd process.

The amanda.conf lives in the test's directory and Amanda reads it as config "." from there;
its dump user is the user running the tests, since the tools refuse to run as anyone else."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.interop.amanda import write_amanda_conf
from tests.interop.conftest import library_tables, run

BARCODES = ["BC0001", "BC0002", "BC0003", "BC0004"]
AMANDA_LOGS = Path("/var/log/amanda")


def ndmpd(server, *args: str) -> str:
    done = run([sys.executable, "-m", "ndmpd", *args])
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def library(server_factory, amanda, tmp_path):
    """A server with library vlib0 (drive ltape0, slots 1024-1027 holding BC0001-4, an empty
    import/export port) and an
    amanda.conf whose changer ``robot`` is chg-ndmp on it (Amanda's drive 0 = ltape0)."""
    if not os.access(AMANDA_LOGS, os.W_OK):
        pytest.skip(f"Amanda's tools write their debug logs to {AMANDA_LOGS}, which this user cannot "
                    "(run as root or as Amanda's user, backup on Debian)")
    server = server_factory(extra=library_tables(tmp_path / "lib", capacity="16MiB", early_warning="1MiB"))
    ndmpd(server, "library", "--config", str(server.config), "create", "vlib0", *BARCODES)
    config_dir = tmp_path / "amanda"
    write_amanda_conf(config_dir, server.host, server.password, "vlib0", {0: "ltape0"})
    return server, amanda(server), config_dir


def test_chg_ndmp_inventory_load_by_slot_and_by_label_and_eject(library):
    server, peer, config_dir = library
    done = peer.perl("""
use Amanda::Changer;
my $chg = open_changer();
my ($err, $inv) = wait_for(sub { $chg->inventory(inventory_cb => $_[0]) });
die "inventory: $err" if $err;
say_json(what => "inventory", map { ("slot$_->{slot}" => $_->{barcode} // "-") } @$inv);

my $res;
($err, $res) = wait_for(sub { $chg->load(slot => 2, res_cb => $_[0]) });
die "load slot 2: $err" if $err;
my $dev = $res->{device};
$dev->property_set("ndmp_username", "ndmp");
$dev->start($ACCESS_WRITE, "TEST-02", "20261202000000") or die "label: " . $dev->error_or_status();
my $file = write_random($dev, "/chg", 32768 * 8, 7);
$dev->finish() or die "finish: " . $dev->error_or_status();
wait_for(sub { $res->set_label(label => "TEST-02", finished_cb => $_[0]) });
say_json(what => "loaded", slot => $res->{this_slot}, barcode => $res->{barcode}, file => $file);
($err) = wait_for(sub { $res->release(finished_cb => $_[0]) });
die "release: $err" if $err;

($err, $res) = wait_for(sub { $chg->load(slot => 3, res_cb => $_[0]) });
die "load slot 3: $err" if $err;
say_json(what => "loaded", slot => $res->{this_slot}, barcode => $res->{barcode});
wait_for(sub { $res->release(finished_cb => $_[0]) });

($err, $res) = wait_for(sub { $chg->load(label => "TEST-02", res_cb => $_[0]) });
die "load TEST-02: $err" if $err;
$dev = $res->{device};
$dev->read_label() == $DEVICE_STATUS_SUCCESS or die "read_label: " . $dev->error_or_status();
$dev->start($ACCESS_READ, undef, undef) or die "start read: " . $dev->error_or_status();
read_check($dev, $file, "/chg", 7);
$dev->finish();
say_json(what => "by label", slot => $res->{this_slot}, label => $dev->volume_label);
wait_for(sub { $res->release(finished_cb => $_[0]) });

($err) = wait_for(sub { $chg->eject(drive => 0, finished_cb => $_[0]) });
die "eject: $err" if $err;
($err, $inv) = wait_for(sub { $chg->inventory(inventory_cb => $_[0]) });
die "inventory: $err" if $err;
say_json(what => "after eject", map { ("slot$_->{slot}" => ($_->{label} // "-") . "/" . ($_->{state} // "?")) } @$inv);
$chg->quit();
""", cwd=config_dir)
    results = peer.results(done)
    assert results[0] == {"what": "inventory", "slot1": "BC0001", "slot2": "BC0002", "slot3": "BC0003",
                          "slot4": "BC0004", "slot5": "-"}, done.stderr                 # 5: the mail slot
    assert results[1] == {"what": "loaded", "slot": 2, "barcode": "BC0002", "file": 1}
    assert results[2] == {"what": "loaded", "slot": 3, "barcode": "BC0003"}
    assert results[3] == {"what": "by label", "slot": 2, "label": "TEST-02"}
    assert results[4]["slot2"].startswith("TEST-02/") and results[4]["slot3"].startswith("-/")
    listing = ndmpd(server, "library", "--config", str(server.config), "list", "vlib0")
    assert [line.split()[-1] for line in listing.splitlines() if line.split()[:1] == ["128"]] == ["-"]   # ejected


HOLDER = """
use Amanda::NDMP qw( :constants );
my $conn = Amanda::NDMP::NDMPConnection->new($ENV{NDMPD_HOST}, 10000, "ndmp", $ENV{NDMPD_PASSWORD}, "md5");
die "connect: " . $conn->err_msg() if $conn->err_code();
$conn->scsi_open("vlib0") or die "scsi_open: " . $conn->err_msg();
$| = 1;
print "held\\n";
my $line = <STDIN>;                      # the test says when to go on
my $res = $conn->scsi_execute_cdb(flags => 0, timeout => 1000, cdb => pack("CxxxxC", 0, 0));
print "still open: ", ($res && $res->{status} == 0 ? "yes" : "no"), "\\n";
$conn->scsi_close() or die "scsi_close: " . $conn->err_msg();
"""


def test_a_second_amanda_process_takes_inventory_and_loads_while_the_first_holds_the_changer(library):
    server, peer, config_dir = library
    holder = peer.start_perl(HOLDER)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        done = peer.perl("""
my $chg = open_changer();
my ($err, $res) = wait_for(sub { $chg->load(slot => 1, res_cb => $_[0]) });   # first call: two connections
die "load slot 1: $err" if $err;
say_json(what => "loaded", slot => $res->{this_slot}, barcode => $res->{barcode});
wait_for(sub { $res->release(finished_cb => $_[0]) });
my $inv;
($err, $inv) = wait_for(sub { $chg->inventory(inventory_cb => $_[0]) });
die "inventory: $err" if $err;
say_json(what => "inventory", map { ("slot$_->{slot}" => $_->{barcode} // "-") } @$inv);
$chg->quit();
""", cwd=config_dir, check=False)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "still open: yes"
        assert holder.wait(30) == 0, holder.stderr.read()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    assert peer.results(done) == [{"what": "loaded", "slot": 1, "barcode": "BC0001"},
                                  {"what": "inventory", "slot1": "BC0001", "slot2": "BC0002", "slot3": "BC0003",
                                   "slot4": "BC0004", "slot5": "-"}]


def test_amanda_reads_a_write_protected_cartridge_and_cannot_write_it(library, tmp_path):
    server, peer, config_dir = library
    peer.perl("""
my $chg = open_changer();
my ($err, $res) = wait_for(sub { $chg->load(slot => 4, res_cb => $_[0]) });
die "load slot 4: $err" if $err;
my $dev = $res->{device};
$dev->start($ACCESS_WRITE, "TEST-04", "20261202000000") or die "label: " . $dev->error_or_status();
write_random($dev, "/archive", 32768 * 16, 44);
$dev->finish() or die "finish: " . $dev->error_or_status();
wait_for(sub { $res->release(finished_cb => $_[0], eject => 1) });
$chg->quit();
""", cwd=config_dir)
    cartridge = tmp_path / "lib" / "BC0004.img"
    ndmpd(server, "tape", "protect", str(cartridge), "on")
    before = cartridge.read_bytes()
    done = peer.perl("""
my $chg = open_changer();
my ($err, $res) = wait_for(sub { $chg->load(slot => 4, res_cb => $_[0]) });
die "load slot 4: $err" if $err;
my $dev = $res->{device};
my $status = $dev->read_label();
say_json(what => "label", status => $status, label => $dev->volume_label, error => $dev->error_or_status());
$dev->start($ACCESS_READ, undef, undef) or die "start read: " . $dev->error_or_status();
read_check($dev, 1, "/archive", 44);
$dev->finish();
say_json(what => "read", ok => 1);
my $written = $dev->start($ACCESS_WRITE, "TEST-09", "20261202000000");
say_json(what => "write", ok => $written ? 1 : 0, error => $dev->error_or_status());
$dev->finish() if $written;
wait_for(sub { $res->release(finished_cb => $_[0]) });
$chg->quit();
""", cwd=config_dir)
    label, read, write = peer.results(done)
    assert (label["status"], label["label"]) == (0, "TEST-04"), label
    assert read == {"what": "read", "ok": 1}
    assert write["ok"] == 0 and "protect" in write["error"].lower(), write
    assert cartridge.read_bytes() == before                    # the archive is untouched


def drive_holds(server) -> str:
    """The barcode in the library's drive element (128), or "-"."""
    listing = ndmpd(server, "library", "--config", str(server.config), "list", "vlib0")
    return next(line.split()[-1] if "from" not in line else line.split()[-3]
                for line in listing.splitlines() if line.split()[:1] == ["128"])


def test_amtape_and_amlabel_with_a_minimal_amanda_conf(library):
    server, peer, config_dir = library

    def tool(*args: str, status: int = 0) -> str:
        done = peer.tool(config_dir, *args)
        assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    inventory = tool("amtape", "inventory")
    for slot, barcode in enumerate(BARCODES, 1):
        assert f"slot {slot}: unknown state barcode {barcode}" in inventory, inventory
    assert "slot 5: empty (import/export slot)" in inventory

    out = tool("amlabel", "TEST-02", "slot", "2")
    assert "Writing label 'TEST-02'" in out and "Success!" in out, out
    assert "slot 2: label TEST-02 barcode BC0002 (in drive 0)" in tool("amtape", "inventory")
    assert drive_holds(server) == "BC0002"

    assert "changed to slot 3" in tool("amtape", "slot", "3")
    assert drive_holds(server) == "BC0003"
    assert "label TEST-02 is now loaded from slot 2" in tool("amtape", "label", "TEST-02")
    assert drive_holds(server) == "BC0002"
    assert "drive ejected" in tool("amtape", "eject")
    assert drive_holds(server) == "-"
    assert "slot 2: label TEST-02 barcode BC0002" in tool("amtape", "inventory")

    assert "already on a volume" in tool("amlabel", "TEST-02", "slot", "3", status=1)
    assert "doesn't match the labelstr" in tool("amlabel", "OTHER-1", "slot", "3", status=1)
    assert "invalid slot '9'" in tool("amtape", "slot", "9", status=1)
    assert (config_dir / "tapelist").read_text().split()[1] == "TEST-02"
