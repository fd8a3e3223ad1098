#!/usr/bin/env python3
"""Which S3 client for cartridges: boto3 against minio (a lighter client), same server
(a SeaweedFS started for the run), same bytes, same run. Each client does what a cartridge
does: a multipart upload of --size (parts of --part-size, 4 in flight) and --gets ranged GETs
of 1 MiB at random offsets. Printed: wall seconds, CPU seconds of this process (the server's
cost is not ours), and client construction time; ratios minio / boto3.

    python benchmarks/s3_clients.py [--size 256MiB] [--part-size 8MiB] [--gets 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ndmpd.config import parse_size                       # noqa: E402
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3   # noqa: E402

IN_FLIGHT = 4


def measure(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class Boto3Client:
    name = "boto3"

    def __init__(self, endpoint: str) -> None:
        import boto3
        from botocore.config import Config
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=16,
                          s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def upload(self, bucket: str, key: str, data: memoryview, part: int) -> None:
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

        def send(n: int) -> dict:
            body = bytes(data[(n - 1) * part:n * part])
            return {"PartNumber": n, "ETag": self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                                                     PartNumber=n, Body=body)["ETag"]}
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            parts = list(pool.map(send, range(1, -(-len(data) // part) + 1)))
        self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                              MultipartUpload={"Parts": parts})

    def get(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key,
                                      Range=f"bytes={offset}-{offset + length - 1}")["Body"].read()


class MinioClient:
    name = "minio"

    def __init__(self, endpoint: str) -> None:
        from minio import Minio
        host = endpoint.split("://", 1)[1]
        self.client = Minio(host, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1")

    def upload(self, bucket: str, key: str, data: memoryview, part: int) -> None:
        self.client.put_object(bucket, key, io.BytesIO(data), len(data), part_size=part,
                               num_parallel_uploads=IN_FLIGHT)

    def get(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        response = self.client.get_object(bucket, key, offset=offset, length=length)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--part-size", default="8MiB")
    parser.add_argument("--gets", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size, part = parse_size(args.size, "--size"), parse_size(args.part_size, "--part-size")
    data = memoryview(os.urandom(size))
    offsets = [random.randrange(0, size - (1 << 20)) for _ in range(args.gets)]
    with tempfile.TemporaryDirectory(prefix="s3clients-") as tmp:
        server = SeaweedS3(Path(tmp))
        try:
            server.start()
            bucket = server.bucket("clients-" + os.urandom(4).hex())
            results: dict[str, list[tuple[float, float, float, float, float]]] = {}
            for round_ in range(args.rounds):
                for cls in (Boto3Client, MinioClient):
                    built = time.perf_counter()
                    client = cls(server.endpoint)
                    construct = time.perf_counter() - built
                    key = f"{cls.name}/{round_}"
                    up_wall, up_cpu = measure(lambda: client.upload(bucket, key, data, part))
                    get_wall, get_cpu = measure(lambda: [client.get(bucket, key, o, 1 << 20) for o in offsets])
                    assert client.get(bucket, key, offsets[0], 16) == bytes(data[offsets[0]:offsets[0] + 16])
                    results.setdefault(cls.name, []).append((construct, up_wall, up_cpu, get_wall, get_cpu))
                    print(f"round {round_ + 1} {cls.name:6}: client {construct * 1e3:5.0f} ms, upload "
                          f"{size / up_wall / 1e6:6.1f} MB/s ({up_cpu:.2f} CPU s), {args.gets} GETs "
                          f"{get_wall:.2f} s ({get_cpu:.2f} CPU s)")
                server.empty(bucket)
            for i, what in ((2, "upload CPU"), (1, "upload wall"), (4, "GET CPU"), (3, "GET wall")):
                ratios = [m[i] / b[i] for b, m in zip(results["boto3"], results["minio"])]
                print(f"{what:12} minio / boto3: {min(ratios):.2f} .. {max(ratios):.2f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
