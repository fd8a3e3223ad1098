"""``ndmp info``: what a server says about itself, as one plain dict and as a table.

Each CONFIG_GET_* answer is one section; a request the server refuses (or that its NDMP
version lacks) becomes ``{"error": ...}`` in its section rather than failing the command,
as ``ndmjob -q`` prints what it can.
"""

from __future__ import annotations

from typing import Any

from ..wire import C, protocol
from .agent import Agent
from .errors import NdmpReplyError

_AUTH = {C.AUTH_NONE: "none", C.AUTH_TEXT: "text", C.AUTH_MD5: "md5"}
V2_BUTYPES = ("dump", "tar")
_ADDR = {C.ADDR_LOCAL: "local", C.ADDR_TCP: "tcp", C.ADDR_IPC: "ipc"}


def _pvals(pvals: list[Any]) -> dict[str, str]:
    return {p.name: p.value for p in pvals}


def _devices(infos: list[Any]) -> list[dict[str, Any]]:
    return [{"model": d.model, "devices": [{"device": c.device, "attr": c.attr, "capability": _pvals(c.capability)}
                                           for c in d.caplist]} for d in infos]


_SECTIONS = {
    "host_info": ("CONFIG_GET_HOST_INFO", lambda r: {"hostname": r.hostname, "os_type": r.os_type,
                                                "os_vers": r.os_vers, "hostid": r.hostid}),
    "server_info": ("CONFIG_GET_SERVER_INFO", lambda r: {
        "vendor": r.vendor_name, "product": r.product_name, "revision": r.revision_number,
        "auth_types": [_AUTH.get(a, str(a)) for a in r.auth_type]}),
    "connection_types": ("CONFIG_GET_CONNECTION_TYPE", lambda r: [_ADDR.get(a, str(a)) for a in r.addr_types]),
    "butypes": ("CONFIG_GET_BUTYPE_INFO", lambda r: [
        {"name": b.butype_name, "attrs": b.attrs, "default_env": _pvals(b.default_env)} for b in r.butype_info]),
    "filesystems": ("CONFIG_GET_FS_INFO", lambda r: [
        {"logical_device": f.fs_logical_device, "physical_device": f.fs_physical_device, "type": f.fs_type,
         "total_size": f.total_size, "used_size": f.used_size, "avail_size": f.avail_size,
         "status": f.fs_status, "env": _pvals(f.fs_env)} for f in r.fs_info]),
    "tape_devices": ("CONFIG_GET_TAPE_INFO", lambda r: _devices(r.tape_info)),
    "scsi_devices": ("CONFIG_GET_SCSI_INFO", lambda r: _devices(r.scsi_info)),
}


async def gather(agent: Agent) -> dict[str, Any]:
    """Every section the server answers, in ``ndmjob -q``'s order."""
    report: dict[str, Any] = {"version": agent.version, "auth": agent.auth}
    for section, (message, shape) in _SECTIONS.items():
        try:
            report[section] = shape(await agent.call(message))
        except NdmpReplyError as exc:
            report[section] = {"error": protocol(4).error_name(exc.code)}
        except ValueError:                        # not a message of this version (v2)
            report[section] = {"error": f"not in NDMPv{agent.version}"}
    if agent.version == 2:
        report["butypes"] = await _v2_butypes(agent)
    return report


async def _v2_butypes(agent: Agent) -> list[dict[str, Any]]:
    """v2 has no BUTYPE_INFO: ask CONFIG_GET_BUTYPE_ATTR for the usual names, as ndmjob does."""
    found = []
    for name in V2_BUTYPES:
        try:
            reply = await agent.call("CONFIG_GET_BUTYPE_ATTR", name=name)
        except NdmpReplyError:
            continue
        found.append({"name": name, "attrs": reply.attrs, "default_env": {}})
    return found


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _env(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items()) or "-"


def render(report: dict[str, Any]) -> str:
    """The human table: one block per section, columns aligned."""
    out = [f"{report['host']} ({report['address']}): NDMPv{report['version']}, logged in with "
           f"{report['auth'].upper()}"]

    def block(title: str, section: str) -> Any:
        value = report.get(section)
        out.append("")
        out.append(title)
        if isinstance(value, dict) and set(value) == {"error"}:
            out.append(f"  ({value['error']})")
            return None
        if not value:
            out.append("  (none)")
            return None
        return value

    def table(rows: list[list[str]]) -> None:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])

    if h := block("Host", "host_info"):
        table([["hostname", h["hostname"]], ["os", f"{h['os_type']} {h['os_vers']}"], ["hostid", h["hostid"]]])
    if s := block("Server", "server_info"):
        table([["vendor", s["vendor"]], ["product", s["product"]], ["revision", s["revision"]],
               ["auth types", ", ".join(s["auth_types"]) or "-"]])
    if c := block("Connection types", "connection_types"):
        out.append("  " + ", ".join(c))
    if b := block("Backup types", "butypes"):
        table([["NAME", "ATTRS", "DEFAULT ENV"]] + [[x["name"], f"0x{x['attrs']:x}", _env(x["default_env"])]
                                                    for x in b])
    if f := block("Filesystems", "filesystems"):
        table([["VOLUME", "TYPE", "SIZE", "USED", "AVAIL", "DEVICE"]]
              + [[x["logical_device"], x["type"], _size(x["total_size"]), _size(x["used_size"]),
                  _size(x["avail_size"]), x["physical_device"]] for x in f])
    for title, section in (("Tape devices", "tape_devices"), ("SCSI devices", "scsi_devices")):
        if d := block(title, section):
            table([["MODEL", "DEVICE", "CAPABILITIES"]]
                  + [[m["model"], c["device"], _env(c["capability"])] for m in d for c in m["devices"]])
    return "\n".join(out)
