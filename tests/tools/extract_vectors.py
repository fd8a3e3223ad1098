"""Extract golden NDMP messages from a capture of real sessions (ndmjob against ndmpd).

Usage: python tests/tools/extract_vectors.py CAPTURE.pcap >> protocol/golden/captured.vectors

Each NDMP record seen on port 10000 is reassembled from its TCP stream and written once per
(version, direction, message, type, header error) as one line of hex. Requests come from the
DMA, so they are independent of our encoder; our replies enter only when tshark dissected
them without a malformed-packet mark.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections import defaultdict

from ndmpd.wire import protocol
from ndmpd.wire.records import RecordReader


def main(pcap: str) -> None:
    rows = subprocess.run(["tshark", "-r", pcap, "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.stream",
                           "-e", "tcp.srcport", "-e", "tcp.payload"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    readers: dict[tuple[str, str], RecordReader] = defaultdict(lambda: RecordReader(1 << 24))
    version: dict[str, int] = {}
    seen = set()
    for row in rows:
        stream, sport, payload = row.split("\t")
        direction = "S" if sport == "10000" else "C"
        for record in readers[(stream, direction)].feed(bytes.fromhex(payload.replace(":", ""))):
            seq, ts, mtype, code, rseq, err = struct.unpack_from(">IIiiIi", record)
            if direction == "C" and code == 0x900:
                version[stream] = struct.unpack_from(">I", record, 24)[0]
            v = version.get(stream, 4)
            msg = protocol(v).message(code)
            name = msg.name if msg else f"0x{code:x}"
            if err:
                continue        # header-error replies carry no body (and tshark flags them)
            key = (v, direction, code, mtype)
            if key in seen:
                continue
            seen.add(key)
            kind = "reply" if mtype == 1 else ("post" if msg and msg.post else "request")
            print(f"v{v} {direction} {name} {kind} {record.hex()}")


if __name__ == "__main__":
    main(sys.argv[1])
