"""``ndmpd cert create|fingerprint``: this server's TLS certificate, made and named by hand."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

DEFAULT_DIR = Path("/etc/ndmpd")
DEFAULT_DAYS = 3650


def add_parser(sub: argparse._SubParsersAction) -> None:
    cert = sub.add_parser("cert", help="make a self-signed TLS certificate, or print a certificate's fingerprint")
    cmds = cert.add_subparsers(dest="cert_command", required=True)
    create = cmds.add_parser("create", help="write ndmpd.crt and ndmpd.key (mode 600), an EC P-256 pair; "
                             "prints the SHA-256 fingerprint to pin in ndmp.toml")
    create.add_argument("--out", type=Path, default=DEFAULT_DIR, metavar="DIR",
                        help=f"where to write them (default {DEFAULT_DIR}; existing files are never replaced)")
    create.add_argument("--name", default=None, metavar="CN",
                        help="the certificate's name (CN and subjectAltName; default: this host's name)")
    create.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="a further DNS name or IP address it is valid for (repeatable)")
    create.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})")
    fingerprint = cmds.add_parser("fingerprint", help="print a certificate's SHA-256 fingerprint (for ndmp.toml)")
    fingerprint.add_argument("file", type=Path, help="a PEM or DER certificate")


def run(args: argparse.Namespace) -> int:
    from .tls import certs
    try:
        if args.cert_command == "create":
            pair = certs.create(args.out, args.name or socket.getfqdn(), args.days, tuple(args.host))
            print(f"certificate {pair.certificate}\nkey         {pair.key} (mode 600)\n"
                  f"fingerprint {pair.fingerprint}")
        else:
            print(certs.fingerprint(certs.certificate_der(args.file, str(args.file))))
        return 0
    except certs.CertificateError as exc:
        print(f"ndmpd cert: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ndmpd cert: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
