"""Media changers over NDMP_SCSI: an emulated SMC-3 library of virtual cartridges, and
pass-through to real changers through Linux SG_IO."""
