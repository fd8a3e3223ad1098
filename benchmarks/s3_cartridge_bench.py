#!/usr/bin/env python3
"""S3 cartridges against a real SeaweedFS started for the run (tests/s3_server.py):

1. backup throughput: records written through a virtual drive onto an S3 cartridge, against a
   plain multipart upload of the same bytes to the same server with the same client (boto3,
   the same part size and parts in flight), in the same run; target ratio >= 0.8;
2. DAR latency: from a cold open of a cartridge holding a --dar-size image, space to a record
   in its middle and read it (what MOVER_READ of one small file costs), with the GET bytes.

    python benchmarks/s3_cartridge_bench.py [--size 512MiB] [--dar-size 1GiB] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmpd.config import parse_size                       # noqa: E402
from ndmpd.devices.s3_client import make_client           # noqa: E402
from ndmpd.devices.s3_medium import S3Store               # noqa: E402
from ndmpd.devices.virtual_tape import VirtualTape        # noqa: E402
from ndmpd.store_config import StoreConfig                # noqa: E402
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3   # noqa: E402


def store_config(server: SeaweedS3, bucket: str, creds: Path, part: int) -> StoreConfig:
    return StoreConfig(bucket, server.endpoint, "bench/", credentials_file=creds, part_size=part)


@contextmanager
def seaweed_store(part: int = 8 << 20) -> Iterator[tuple[SeaweedS3, StoreConfig]]:
    """A SeaweedFS started for the run, a fresh bucket and a store on it (stopped at the end)."""
    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp:
        server = SeaweedS3(Path(tmp))
        try:
            server.start()
            bucket = server.bucket("bench-" + os.urandom(4).hex())
            creds = Path(tmp) / "creds"
            creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
            creds.chmod(0o600)
            yield server, store_config(server, bucket, creds, part)
        finally:
            server.stop()


def plain_multipart(config: StoreConfig, data: memoryview, key: str) -> float:
    """Seconds for a multipart upload of ``data`` the usual way: parts of part_size, at most
    uploads_in_flight at once, one client."""
    client = make_client(config)
    part = config.part_size
    start = time.perf_counter()
    upload = client.create_multipart_upload(Bucket=config.bucket, Key=key)["UploadId"]

    def send(number: int) -> dict:
        body = bytes(data[(number - 1) * part:number * part])
        etag = client.upload_part(Bucket=config.bucket, Key=key, UploadId=upload, PartNumber=number,
                                  Body=body)["ETag"]
        return {"PartNumber": number, "ETag": etag}
    count = -(-len(data) // part)
    with ThreadPoolExecutor(config.uploads_in_flight) as pool:
        parts = list(pool.map(send, range(1, count + 1)))
    client.complete_multipart_upload(Bucket=config.bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    return time.perf_counter() - start


def cartridge_backup(config: StoreConfig, data: memoryview, name: str, record: int, capacity: int) -> float:
    """Seconds to write ``data`` as records through a virtual drive (as the mover does: batches
    of records) and close the tape file (filemark: the upload completes, the index is PUT)."""
    tape = VirtualTape("bench", S3Store(config).cartridge(name), capacity)
    start = time.perf_counter()
    tape.open(write=True)
    done, count, batch = 0, len(data) // record, 32
    while done < count:
        done += tape.write_records(data[done * record:min(count, done + batch) * record], record)
    tape.write_filemarks(1)
    tape.close()
    return time.perf_counter() - start


def dar(config: StoreConfig, name: str, records: int) -> tuple[float, int, int]:
    """Cold open, space to the middle record, read it: seconds, GET requests, GET bytes."""
    store = S3Store(config)
    store.client                        # a server builds its client once, not per restore
    tape = VirtualTape("bench", store.cartridge(name), 1 << 50)
    start = time.perf_counter()
    tape.open(write=False)
    tape.rewind()
    tape.space_records(records // 2)
    tape.read_record(1 << 20)
    elapsed = time.perf_counter() - start
    tape.close()
    return elapsed, store.traffic.gets, store.traffic.got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--dar-size", default="1GiB")
    parser.add_argument("--record-size", default="256KiB")
    parser.add_argument("--part-size", default="8MiB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size, record = parse_size(args.size, "--size"), parse_size(args.record_size, "--record-size")
    part, dar_size = parse_size(args.part_size, "--part-size"), parse_size(args.dar_size, "--dar-size")
    with seaweed_store(part) as (server, config):
        bucket = config.bucket
        data = memoryview(os.urandom(size))
        ratios = []
        for round_ in range(args.rounds):       # the order alternates: the server's state drifts
            timed = {}
            runs = {"plain": lambda: plain_multipart(config, data, f"plain/{round_}"),
                    "cartridge": lambda: cartridge_backup(config, data, f"C{round_}", record, size * 2)}
            for which in (("plain", "cartridge") if round_ % 2 == 0 else ("cartridge", "plain")):
                cpu = time.process_time()
                timed[which] = (runs[which](), time.process_time() - cpu)
            (plain, plain_cpu), (cart, cart_cpu) = timed["plain"], timed["cartridge"]
            ratios.append(plain / cart)
            print(f"round {round_ + 1}: plain multipart {size / plain / 1e6:7.1f} MB/s ({plain_cpu:.2f} CPU s), "
                  f"S3 cartridge {size / cart / 1e6:7.1f} MB/s ({cart_cpu:.2f} CPU s), ratio {plain / cart:.2f}")
            server.empty(bucket)
        print(f"backup ratio (cartridge / plain multipart): median {statistics.median(ratios):.2f}, rounds "
              f"{min(ratios):.2f} .. {max(ratios):.2f} (target >= 0.8)")

        image = memoryview(os.urandom(64 << 20))
        tape = VirtualTape("bench", S3Store(config).cartridge("DAR"), dar_size * 2)
        tape.open(write=True)
        records = dar_size // record
        per = len(image) // record
        for i in range(0, records, per):
            n = min(per, records - i)
            written = 0
            while written < n:
                written += tape.write_records(image[written * record:n * record], record)
        tape.write_filemarks(1)
        tape.close()
        for round_ in range(args.rounds):
            seconds, gets, got = dar(config, "DAR", records)
            print(f"DAR of one record in the middle of a {dar_size >> 20} MiB image: {seconds * 1e3:.0f} ms, "
                  f"{gets} GETs, {got / 1e6:.1f} MB fetched ({got / dar_size:.2%} of the image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
