"""Amanda's ``ndmp:`` device on a drive whose cartridge lives in S3 (a real SeaweedFS): it
labels, writes three files and reads them back seeking back and forth, as on a file."""

from __future__ import annotations

import uuid

import pytest

from tests.interop.s3_rig import credentials_file, s3_drive

pytestmark = pytest.mark.interop


def test_amanda_labels_writes_and_reads_back_an_s3_drive(server_factory, amanda, s3_server, tmp_path):
    bucket = s3_server.bucket("am-" + uuid.uuid4().hex[:12])
    server = server_factory(extra=s3_drive("s3tape", s3_server, bucket, credentials_file(tmp_path)))
    peer = amanda(server)
    done = peer.perl("""
my $block = 1048576;
my $dev = open_device("s3tape", block_size => $block);
$dev->start($ACCESS_WRITE, "S3TEST", "20261204000000") or die "start: " . $dev->error_or_status();
my @files = map { write_random($dev, "/disk$_", $block * 3 * $_, 2000 + $_) } 1..3;
$dev->finish() or die "finish: " . $dev->error_or_status();

my $reader = open_device("s3tape", read_block_size => $block);
$reader->read_label() == $DEVICE_STATUS_SUCCESS or die "read_label: " . $reader->error_or_status();
$reader->start($ACCESS_READ, undef, undef) or die "start read: " . $reader->error_or_status();
read_check($reader, $files[$_ - 1], "/disk$_", 2000 + $_) for (3, 1, 2);
$reader->finish();
say_json(files => join(",", @files), label => $reader->volume_label);
""")
    assert peer.results(done) == [{"files": "1,2,3", "label": "S3TEST"}]
    assert len([k for k in s3_server.keys(bucket) if k.startswith("ndmpd/s3tape/seg-")]) >= 4   # label + 3 files
    assert not s3_server.open_uploads(bucket)
