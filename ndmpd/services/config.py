"""CONFIG interface: a truthful description of the host, its volumes, drives and formats."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Volume
from ..errors import NdmpError
from ..host import fs_usage, mount_of
from ..replica.status import replica_env
from ..snapshots import SnapshotError
from ..snapshots.btrfs import is_subvolume
from ..snapshots.btrfs_send import subvolume_info
from ..wire import C, T, protocol
from ..wire.auth import MD5_CHALLENGE_SIZE
from . import HandlerTable
from .connect import AUTH_CODES, allowed_auth_types
from .tls_data import offered, select

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger("ndmpd.config")
HANDLERS = HandlerTable()
ALL_ONES = (1 << 64) - 1
FS_SIZES_UNKNOWN = (C.FS_INFO_TOTAL_SIZE_UNS | C.FS_INFO_USED_SIZE_UNS | C.FS_INFO_AVAIL_SIZE_UNS
                    | C.FS_INFO_TOTAL_INODES_UNS | C.FS_INFO_USED_INODES_UNS)


@HANDLERS.on(C.CONFIG_GET_HOST_INFO)
def get_host_info(session: "Session", req: Any) -> Any:
    ident = session.ctx.identity
    if session.version == 2:          # the v2 reply also lists the auth types
        return protocol(2).types.config_get_host_info_reply(
            C.NO_ERR, ident.hostname, ident.os_type, ident.os_vers, ident.hostid, allowed_auth_types(session))
    return T.config_get_host_info_reply(C.NO_ERR, ident.hostname, ident.os_type, ident.os_vers, ident.hostid)


@HANDLERS.on(C.CONFIG_GET_SERVER_INFO, pre_auth=True)
def get_server_info(session: "Session", req: Any) -> Any:
    ctx = session.ctx
    return T.config_get_server_info_reply(C.NO_ERR, ctx.vendor, ctx.product, ctx.revision,
                                          allowed_auth_types(session))


@HANDLERS.on(C.CONFIG_GET_CONNECTION_TYPE)      # v2: CONFIG_GET_MOVER_TYPE, same layout
def get_connection_type(session: "Session", req: Any) -> Any:
    return T.config_get_connection_type_reply(C.NO_ERR, [C.ADDR_LOCAL, C.ADDR_TCP])


@HANDLERS.on(C.CONFIG_GET_AUTH_ATTR, pre_auth=True)
def get_auth_attr(session: "Session", req: Any) -> Any:
    kind = req.auth_type
    if kind not in AUTH_CODES.values() or kind not in allowed_auth_types(session):
        raise NdmpError(C.ILLEGAL_ARGS_ERR, f"auth type {kind} not enabled")
    attr = T.auth_attr(kind)
    if kind == C.AUTH_MD5:
        session.md5_challenge = session.ctx.random_bytes(MD5_CHALLENGE_SIZE)
        attr.challenge = session.md5_challenge
    return T.config_get_auth_attr_reply(C.NO_ERR, attr)


@HANDLERS.on(0x101)                             # v2 only: CONFIG_GET_BUTYPE_ATTR
def get_butype_attr(session: "Session", req: Any) -> Any:
    v2 = protocol(2).types
    for butype in session.ctx.butypes:
        if butype.name == req.name:
            return v2.config_get_butype_attr_reply(C.NO_ERR, butype.v2_attrs)
    raise NdmpError(C.ILLEGAL_ARGS_ERR, f"no backup type {req.name!r}")


@HANDLERS.on(C.CONFIG_GET_BUTYPE_INFO)
def get_butype_info(session: "Session", req: Any) -> Any:
    infos = [T.butype_info(b.name, [T.pval(k, v) for k, v in b.default_env], b.attrs)
             for b in session.ctx.butypes]
    return T.config_get_butype_info_reply(C.NO_ERR, infos)


SERVER_ID_FILE = "server-id"


def server_id(state_dir: Path) -> str:
    """This server's UUID, made once and kept in ``state_dir/server-id`` (so a volume's id
    survives restarts and renames of the host)."""
    path = Path(state_dir) / SERVER_ID_FILE
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{SERVER_ID_FILE}.{os.getpid()}")
    temporary.write_text(str(uuid.uuid4()) + "\n")
    try:
        os.link(temporary, path)          # the first writer wins; a racing one reads its id
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return str(uuid.UUID(path.read_text().strip()))


def volume_id(volume: Volume, server: str) -> str:
    """NDMPD_VOLUME_ID: ``btrfs:<subvolume UUID>`` for a btrfs subvolume that is not a replica
    (the same wherever it is mounted), else ``ndmpd:<server id>:<volume name>``."""
    if not getattr(volume, "replica", False) and is_subvolume(Path(volume.path)):
        try:
            return f"btrfs:{subvolume_info(Path(volume.path)).uuid}"
        except SnapshotError as exc:
            log.warning("volume %s: no subvolume UUID (%s); using the server's id", volume.name, exc)
    return f"ndmpd:{server}:{volume.name}"


def fs_info(volume: Volume, state_dir: Path | None = None) -> Any:
    """One FS_INFO entry: real statvfs figures, or an offline status when unavailable."""
    mount = mount_of(volume.path)
    env = [T.pval("LOCAL_NAME", str(volume.path)), T.pval("SNAPSHOT", volume.snapshot)]
    if state_dir is not None:
        try:
            env.append(T.pval("NDMPD_VOLUME_ID", volume_id(volume, server_id(state_dir))))
        except OSError as exc:             # state_dir not writable: no id rather than no answer
            log.warning("no NDMPD_VOLUME_ID for %s: %s", volume.name, exc)
        env += [T.pval(name, value) for name, value in replica_env(volume, state_dir)]
    info = T.fs_info(fs_type=mount.fs_type if mount else "unknown",
                     fs_logical_device=volume.name,
                     fs_physical_device=mount.device if mount else "",
                     fs_env=env)
    if mount:
        env.append(T.pval("MOUNT_POINT", str(mount.mount_point)))
    try:
        usage = fs_usage(volume.path)
    except OSError as exc:
        info.unsupported = FS_SIZES_UNKNOWN
        info.total_size = info.used_size = info.avail_size = ALL_ONES
        info.total_inodes = info.used_inodes = ALL_ONES
        info.fs_status = f"offline: {exc.strerror}"
        return info
    info.total_size, info.used_size, info.avail_size = usage.total_size, usage.used_size, usage.avail_size
    info.total_inodes, info.used_inodes = usage.total_inodes, usage.used_inodes
    info.fs_status = "online"
    return info


@HANDLERS.on(C.CONFIG_GET_FS_INFO)
def get_fs_info(session: "Session", req: Any) -> Any:
    config = session.ctx.config
    return T.config_get_fs_info_reply(C.NO_ERR, [fs_info(v, config.server.state_dir) for v in config.volumes])


@HANDLERS.on(C.CONFIG_GET_TAPE_INFO)
def get_tape_info(session: "Session", req: Any) -> Any:
    infos = []
    for tape in session.ctx.config.tapes:
        attr = C.TAPE_ATTR_REWIND | C.TAPE_ATTR_UNLOAD
        caps = [T.pval("EXECUTE_CDB", "t" if tape.kind == "st" else "f"),
                T.pval("CAPACITY", str(tape.capacity)),
                T.pval("DEVICE_PATH", tape.store.url(tape.name + "/") if tape.store else str(tape.path))]
        model = "ndmpd virtual tape" if tape.kind == "virtual" else "Linux st tape drive"
        infos.append(T.device_info(model, [T.device_capability(tape.name, attr, caps)]))
    return T.config_get_tape_info_reply(C.NO_ERR, infos)


@HANDLERS.on(C.CONFIG_GET_SCSI_INFO)
def get_scsi_info(session: "Session", req: Any) -> Any:
    infos = []
    for changer in session.ctx.config.changers:
        caps = [T.pval("DEVICE_PATH", str(changer.path)), T.pval("KIND", changer.kind)]
        if changer.kind == "virtual":
            caps += [T.pval("DRIVES", ",".join(changer.drives)), T.pval("SLOTS", str(changer.slots)),
                     T.pval("IMPORT_EXPORT", str(changer.import_export))]
        model = "ndmpd virtual library" if changer.kind == "virtual" else "SCSI media changer (sg)"
        infos.append(T.device_info(model, [T.device_capability(changer.name, 0, caps)]))
    return T.config_get_scsi_info_reply(C.NO_ERR, infos)


@HANDLERS.on(C.CONFIG_GET_EXT_LIST)
def get_ext_list(session: "Session", req: Any) -> Any:
    if session.ext_list_set:
        raise NdmpError(C.EXT_DANDN_ILLEGAL_ERR, "extensions already negotiated")
    return T.config_get_ext_list_reply(C.NO_ERR, [T.class_list(class_id, list(versions))
                                                  for class_id, versions in offered(session).items()])


@HANDLERS.on(C.CONFIG_SET_EXT_LIST)
def set_ext_list(session: "Session", req: Any) -> Any:
    if session.ext_list_set:
        raise NdmpError(C.EXT_DANDN_ILLEGAL_ERR, "SET_EXT_LIST is allowed once per session")
    select(session, [(e.class_id, e.class_version) for e in req.ndmp4_accepted_ext])
    session.ext_list_set = True
    return T.config_set_ext_list_reply(C.NO_ERR)
