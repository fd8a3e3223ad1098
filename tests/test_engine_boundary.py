"""The engine stands apart from NDMP: importing all of it loads no protocol or service code."""

from __future__ import annotations

import subprocess
import sys


def test_engine_and_snapshots_import_no_protocol_code():
    probe = ("import sys, pkgutil, importlib, ndmpd.engine, ndmpd.snapshots\n"
             "for pkg in (ndmpd.engine, ndmpd.snapshots):\n"
             "    for m in pkgutil.iter_modules(pkg.__path__):\n"
             "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
             "print(sorted(n for n in sys.modules if n.startswith(('ndmpd.wire', 'ndmpd.services', "
             "'ndmpd.session', 'ndmpd.server', 'ndmpd.mover'))))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
