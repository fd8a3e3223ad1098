"""Short fuzz runs of the pax reader and the restorer (the long ones: benchmarks/fuzz_engine.py):
mutated valid and crafted hostile streams never end a run with anything but a stream error,
and a restore never changes anything outside its target."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.engine_fuzz import Sandbox, fuzz_reader, fuzz_restore, mutate, seed_streams

OPS = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 1 << 30), st.integers(0, 1 << 30)), max_size=6)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return seed_streams(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return Sandbox(tmp_path_factory.mktemp("fuzz-sandbox")).create()


def test_fuzz_the_pax_reader(seeds):
    @FUZZ
    @given(seed=st.integers(0, len(seeds) - 1), ops=OPS)
    def check(seed, ops):
        fuzz_reader(mutate(seeds[seed], ops))
    check()


def test_fuzz_the_reader_on_raw_bytes():
    @FUZZ
    @given(data=st.binary(max_size=4096))
    def check(data):
        fuzz_reader(data)
    check()


def test_fuzz_the_restorer_in_a_sandbox(seeds, sandbox):
    @FUZZ
    @given(seed=st.integers(0, len(seeds) - 1), ops=OPS, variant=st.integers(0, 11))
    def check(seed, ops, variant):
        fuzz_restore(mutate(seeds[seed], ops), sandbox, variant)
    check()


def test_every_crafted_stream_restores_in_the_sandbox_untouched(seeds, sandbox):
    for variant in range(12):
        for stream in seeds:
            fuzz_restore(stream, sandbox, variant)
