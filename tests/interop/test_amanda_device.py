"""Amanda's ``ndmp:HOST:PORT@DRIVE`` device (Amanda::Device) against a real ndmpd process."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("block", [32768, 1 << 20])
def test_amanda_labels_writes_three_files_and_reads_them_back_by_seeking(server_factory, amanda, block):
    """At Amanda's default block size and at the 1 MiB an admin sets with BLOCK_SIZE."""
    server = server_factory()
    peer = amanda(server)
    done = peer.perl(f"""
my $block = {block};
my $dev = open_device("vtape0", block_size => $block);
$dev->start($ACCESS_WRITE, "TEST1", "20261202000000") or die "start: " . $dev->error_or_status();
my @files = map {{ write_random($dev, "/disk$_", $block * 4 * $_, 1000 + $_) }} 1..3;
$dev->finish() or die "finish: " . $dev->error_or_status();

my $reader = open_device("vtape0", read_block_size => $block);
$reader->read_label() == $DEVICE_STATUS_SUCCESS or die "read_label: " . $reader->error_or_status();
$reader->start($ACCESS_READ, undef, undef) or die "start read: " . $reader->error_or_status();
read_check($reader, $files[$_ - 1], "/disk$_", 1000 + $_) for (3, 1, 2);     # seek back and forth
$reader->finish();
say_json(files => join(",", @files), label => $reader->volume_label);
""")
    assert peer.results(done) == [{"files": "1,2,3", "label": "TEST1"}]
