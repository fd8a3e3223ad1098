"""Linux ``st`` ioctl numbers and struct layouts (x86-64/aarch64 ABI), in one place.

From <linux/mtio.h>: ``struct mtop {short mt_op; int mt_count;}``, ``struct mtget {long
mt_type, mt_resid, mt_dsreg, mt_gstat, mt_erreg; __kernel_daddr_t mt_fileno, mt_blkno;}``,
``struct mtpos {long mt_blkno;}``.
"""

from __future__ import annotations

from construct import Int16sn, Int32sn, Int64sn, Padding, Struct

MTOP = Struct("op" / Int16sn, Padding(2), "count" / Int32sn)
MTGET = Struct("type" / Int64sn, "resid" / Int64sn, "dsreg" / Int64sn, "gstat" / Int64sn,
               "erreg" / Int64sn, "fileno" / Int32sn, "blkno" / Int32sn)
MTPOS = Struct("blkno" / Int64sn)


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("m") << 8) | number


IOC_WRITE, IOC_READ = 1, 2
MTIOCTOP = _ioc(IOC_WRITE, 1, MTOP.sizeof())       # 0x40086d01
MTIOCGET = _ioc(IOC_READ, 2, MTGET.sizeof())       # 0x80306d02
MTIOCPOS = _ioc(IOC_READ, 3, MTPOS.sizeof())       # 0x80086d03

# mt_op values
MTFSF, MTBSF, MTFSR, MTBSR, MTWEOF, MTREW, MTOFFL, MTNOP = 1, 2, 3, 4, 5, 6, 7, 8
MTSETBLK = 20

# mt_gstat bits
GMT_EOF = 0x80000000
GMT_BOT = 0x40000000
GMT_EOT = 0x20000000
GMT_EOD = 0x08000000
GMT_WR_PROT = 0x04000000
GMT_ONLINE = 0x01000000
GMT_DR_OPEN = 0x00040000

MT_ST_BLKSIZE_MASK = 0xFFFFFF
