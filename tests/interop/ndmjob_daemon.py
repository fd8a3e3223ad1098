"""Helpers for tests that use ndmjob's own daemon as another vendor's NDMP server
(``conftest.ndmjob_daemon`` starts it): a hosts file naming it for ``ndmp``, and the records
of its simulated tape file (to read back what a backup wrote, or to check a restore's source)."""

from __future__ import annotations

import struct
from pathlib import Path

DAEMON_USER = DAEMON_PASSWORD = "ndmp"    # what ndmjob's daemon accepts (TEXT or MD5)


def hosts_file(home: Path, hosts: dict[str, tuple[str, int, str]]) -> Path:
    """``home``/ndmp/ndmp.toml naming each host (address, port, password), passwords mode 600."""
    folder = home / "ndmp"
    folder.mkdir(parents=True, exist_ok=True)
    text = ""
    for name, (address, port, password) in hosts.items():
        secret = folder / f"{name}.pw"
        secret.write_text(password)
        secret.chmod(0o600)
        text += f'[host.{name}]\naddress = "{address}"\nport = {port}\nuser = "ndmp"\npassword_file = "{secret.name}"\n'
    (folder / "ndmp.toml").write_text(text)
    return folder / "ndmp.toml"


def simulator_records(path: Path) -> list[bytes | None]:
    """The records of an ndmjob simulated tape file, None for each filemark.

    ndmjob's tape simulator puts a 32-byte header before each record (little-endian: magic
    0x0BEEFEE0, 4 bytes, a type — BOT_, DATA, FILE (a filemark), EOT_ —, 4 bytes, the previous
    record's size, this one's size; sizes 64-bit)."""
    data, out, pos = path.read_bytes(), [], 0
    while pos + 32 <= len(data):
        magic, _, kind, _, _, size = struct.unpack_from("<II4sIQQ", data, pos)
        assert magic == 0x0BEEFEE0, f"not a simulator header at {pos}: {data[pos:pos + 32]!r}"
        pos += 32
        if kind == b"DATA":
            out.append(data[pos:pos + size])
            pos += size
        elif kind == b"FILE":
            out.append(None)
        elif kind == b"EOT_":
            break
    return out


def simulator_image(path: Path, file_number: int = 0) -> bytes:
    """The bytes of tape file ``file_number`` (records between filemarks) of a simulated tape."""
    records, number, out = simulator_records(path), 0, []
    for record in records:
        if record is None:
            number += 1
            if number > file_number:
                break
        elif number == file_number:
            out.append(record)
    return b"".join(out)
