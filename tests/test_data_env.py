"""The DATA environment's precedence: the DMA's value, then the volume's configuration, then the
butype's default (which only fills in what neither said)."""

from __future__ import annotations

from pathlib import Path

from ndmpd.config import Volume
from ndmpd.data.env import parse
from ndmpd.services.data import BUTYPES

VOLUMES = (Volume("/v", Path("/srv/v"), "none"),)


def test_butype_defaults_never_override_the_volume_configuration():
    for butype in (b for b in BUTYPES if dict(b.default_env).get("SNAPSHOT")):   # btrfs: always a snapshot
        env = parse([("FILESYSTEM", "/v")], butype.name, "f", VOLUMES, True, butype.default_env)
        assert env.snapshot == "none"                      # configured, though the butype says auto
        assert env.update and env.direct and env.level == 0   # defaults fill in what nobody set


def test_the_dma_overrides_both():
    tar = BUTYPES[0]
    env = parse([("FILESYSTEM", "/v"), ("SNAPSHOT", "btrfs"), ("UPDATE", "n")], "tar", "f", VOLUMES, True,
                tar.default_env)
    assert env.snapshot == "btrfs" and not env.update
