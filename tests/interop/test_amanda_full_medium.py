"""Amanda's ``ndmp:`` device writing past the physical end of a small cartridge stops with its
"No space left on device" (NDMP IO_ERR there, EOM_ERR only once at the early warning: the
reference tape agent's behaviour, which Amanda's robust_write relies on: it retries EOM_ERR
without limit), in bounded time, and the file written before reads back byte-exact."""

from __future__ import annotations

import subprocess

import pytest

SMALL_TAPE = '\n[[tape]]\nname = "small"\npath = "{path}"\ncapacity = "2MiB"\nearly_warning = "256KiB"\n'

SCRIPT = r"""
use Time::HiRes qw( time );
my $dev = open_device("small");
$dev->start($ACCESS_WRITE, "FULL1", "20261202000000") or die "start: " . $dev->error_or_status();
my $first = write_random($dev, "/fits", 32768 * 16, 41);
$dev->start_file(dump_header("/too-big")) or die "start_file: " . $dev->error_or_status();
my $began = time();
eval { run_xfer(Amanda::Xfer::Source::Random->new(32768 * 128, 42),
                Amanda::Xfer::Dest::Device->new($dev, CANCEL_AT_LEOM)); };
(my $error = $@) =~ s/\s+\z//;
my $seconds = time() - $began;
my $eom = $dev->is_eom ? 1 : 0;
$dev->finish();

my $reader = open_device("small");
$reader->read_label() == $DEVICE_STATUS_SUCCESS or die "read_label: " . $reader->error_or_status();
$reader->start($ACCESS_READ, undef, undef) or die "start read: " . $reader->error_or_status();
read_check($reader, $first, "/fits", 41);
$reader->finish();
say_json(error => $error, eom => $eom, seconds => int($seconds), first => $first, label => $reader->volume_label);
"""


@pytest.mark.parametrize("cancel_at_leom, message", [(0, "No space left on device"), (1, "LEOM detected")])
def test_amanda_writing_past_the_end_of_a_small_cartridge_stops_and_keeps_the_first_file(
        server_factory, amanda, tmp_path, cancel_at_leom, message):
    server = server_factory(extra=SMALL_TAPE.format(path=tmp_path / "small.img"))
    peer = amanda(server)
    try:
        done = peer.perl(SCRIPT.replace("CANCEL_AT_LEOM", str(cancel_at_leom)), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("Amanda never stopped writing at the end of the medium")
    [result] = peer.results(done)
    assert message in result["error"], result
    assert result["eom"] == 1
    assert result["seconds"] < 30
    assert (result["first"], result["label"]) == (1, "FULL1")
    assert "Traceback" not in server.log.read_text()
