"""Amanda's stock ``ndmp:`` device (no TCP_NODELAY, requests in 4000-byte xdrrec fragments)
writes at disk speed, not at one 40 ms delayed-ACK stall per 32 KiB block."""

from __future__ import annotations

BLOCKS = 2048                   # 64 MiB at Amanda's 32 KiB: 90 s at the stall, about 1 s without


def test_amanda_writes_64_mib_at_32_kib_blocks_well_within_its_timeout(server_factory, amanda):
    server = server_factory()
    peer = amanda(server)
    done = peer.perl(f"""
use Time::HiRes qw( time );
my $dev = open_device("vtape0");
$dev->start($ACCESS_WRITE, "SPEED1", "20261202000000") or die "start: " . $dev->error_or_status();
my $start = time;
my $file = write_random($dev, "/big", 32768 * {BLOCKS}, 77);
my $seconds = time - $start;
$dev->finish() or die "finish: " . $dev->error_or_status();

my $reader = open_device("vtape0");
$reader->read_label() == $DEVICE_STATUS_SUCCESS or die "read_label: " . $reader->error_or_status();
$reader->start($ACCESS_READ, undef, undef) or die "start read: " . $reader->error_or_status();
read_check($reader, $file, "/big", 77);
$reader->finish();
say_json(file => $file, block_size => $dev->block_size, seconds => sprintf("%.3f", $seconds));
""", timeout=60)
    (result,) = peer.results(done)
    assert (result["file"], result["block_size"]) == (1, 32768)
    assert float(result["seconds"]) < 20, f"64 MiB took {result['seconds']} s"
