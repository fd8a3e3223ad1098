"""The codec compiled from protocol/*.x: golden vectors, bounds on hostile input."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndmpd.wire import XdrError, protocol
from ndmpd.wire.message import unpack_header
from ndmpd.wire.schema import protocol_dir
from ndmpd.wire.xdr_codec import Codec
from ndmpd.wire.xdr_parser import XdrSyntaxError, parse

GOLDEN = protocol_dir() / "golden"
INTERFACES = {"CONNECT": 0x900, "CONFIG": 0x100, "SCSI": 0x200, "TAPE": 0x300, "DATA": 0x400,
              "NOTIFY": 0x500, "LOG": 0x600, "FH": 0x700, "MOVER": 0xA00}


def load_vectors() -> list[tuple[int, str, str, bytes]]:
    vectors = []
    for path in sorted(GOLDEN.glob("*.vectors")):
        for line in path.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            version, _direction, name, kind, *hexwords = line.split()
            vectors.append((int(version[1:]), name, kind, bytes.fromhex("".join(hexwords))))
    return vectors


VECTORS = load_vectors()


@pytest.mark.parametrize("version,name,kind,record", VECTORS,
                         ids=[f"v{v}-{n}-{k}-{i}" for i, (v, n, k, _) in enumerate(VECTORS)])
def test_golden_vector_round_trips_byte_exact(version, name, kind, record):
    proto = protocol(version)
    header = unpack_header(record)
    spec = proto.message(header.message_code)
    assert spec is not None and spec.name == name
    assert header.message_type == (1 if kind == "reply" else 0)
    body = proto.decode_body(header.message_code, header.message_type, record)
    again = header.pack() + proto.encode_body(header.message_code, header.message_type, body)
    assert again.hex() == record.hex()


def test_golden_vectors_cover_every_interface_in_every_version():
    covered = {(v, code & 0xF00) for v, name, _, rec in VECTORS for code in [unpack_header(rec).message_code]}
    for version in (2, 3, 4):
        for interface, base in INTERFACES.items():
            assert (version, base & 0xF00) in covered, f"no golden vector for v{version} {interface}"


def test_handmade_fh_vector_decodes_to_the_written_fields():
    record = next(r for v, n, _, r in VECTORS if v == 4 and n == "FH_ADD_FILE")
    body = protocol(4).decode_body(0x703, 0, record)
    (entry,) = body.files
    assert entry.names[0].unix_name == "/etc"
    assert entry.stats[0].fattr == 0o40755 and entry.stats[0].size == 4096
    assert (entry.node, entry.fh_info) == (2, 512)


def test_v3_and_v4_layouts_differ_where_the_spec_says():
    v3, v4 = protocol(3), protocol(4)
    state3 = v3.encode_body(0xA00, 1, v3.types.mover_get_state_reply())
    state4 = v4.encode_body(0xA00, 1, v4.types.mover_get_state_reply())
    assert len(state4) == len(state3) + 4          # v4 adds mode; both LOCAL addresses are 4 bytes
    assert v4.message(0x203) is None and v3.message(0x203).name == "SCSI_SET_TARGET"
    assert v4.message(0x109).name == "CONFIG_SET_EXT_LIST" and v3.message(0x109) is None


def test_array_count_larger_than_record_is_refused_without_allocating():
    proto = protocol(4)
    # FH_ADD_FILE claiming 2^31 entries in a 4-byte body
    with pytest.raises(XdrError):
        proto.codec.decode("ndmp4_fh_add_file_post", b"\x80\x00\x00\x00")
    with pytest.raises(XdrError):
        proto.codec.decode("ndmp4_tape_write_request", b"\x7f\xff\xff\xff" + bytes(8))


def test_bounded_string_and_fixed_opaque_lengths_are_checked():
    codec = Codec(parse("struct s { string name<4>; opaque d[3]; };"))
    value, _ = codec.decode("s", bytes.fromhex("00000002 6162 0000 010203 00".replace(" ", "")))
    assert (value.name, value.d) == ("ab", b"\x01\x02\x03")
    with pytest.raises(XdrError):
        codec.decode("s", bytes.fromhex("00000005 6162636465 000000 010203 00".replace(" ", "")))
    with pytest.raises(XdrError):
        codec.encode("s", codec.classes["s"](name="abcdef"))


def test_union_with_unknown_discriminant_is_a_decode_error_unless_default():
    proto = protocol(4)
    with pytest.raises(XdrError):
        proto.codec.decode("ndmp4_auth_data", bytes.fromhex("00000009"))
    name, _ = proto.codec.decode("ndmp4_file_name", bytes.fromhex("00000007 00000001 61000000".replace(" ", "")))
    assert (name.fs_type, name.other_name) == (7, "a")


def test_non_utf8_names_round_trip_unchanged():
    proto = protocol(4)
    raw = b"caf\xe9/\xff"
    name = proto.types.file_name(0, unix_name=raw.decode("utf-8", "surrogateescape"))
    encoded = proto.codec.encode("ndmp4_file_name", name)
    assert raw in encoded
    assert proto.codec.decode("ndmp4_file_name", encoded)[0] == name


def test_parser_reports_file_and_line():
    with pytest.raises(XdrSyntaxError, match=r"x.x:2"):
        parse("const A = 1;\nstruct { int a; };", "x.x")


BODY_TYPES = sorted({(v, t) for v in (2, 3, 4) for m in protocol(v).messages.values()
                     for t in (m.request, m.reply, m.post) if t})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BODY_TYPES), st.binary(max_size=512))
def test_decoder_on_random_bytes_only_raises_xdr_error(version_and_type, data):
    version, type_name = version_and_type
    codec = protocol(version).codec
    try:
        value, end = codec.decode(type_name, data)
    except XdrError:
        return
    assert end <= len(data) + 3
    codec.encode(type_name, value)          # whatever decodes, encodes again
