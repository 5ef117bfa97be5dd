"""Fuzz the data set walker (HARDENING D01-D03, D08, D09, D18): only MalformedDataset, never a crash.

Bounded for CI by ``max_examples``; ``python bench/fuzz.py --seconds 600``
runs the same targets for longer.
"""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from twisted.trial.unittest import SynchronousTestCase

from gateway.validate import walk_dataset
from tests.unit.fuzz import SYNTAXES, arbitrary, dataset_seeds, mutated, target_walk_dataset

_SETTINGS = settings(max_examples=6000, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class WalkDatasetFuzzTests(SynchronousTestCase):
    """``walk_dataset`` returns a summary or raises MalformedDataset, whatever the bytes."""

    def test_whole_seed_files_walk(self) -> None:
        """The pydicom files behind the seeds walk cleanly in full, so mutations start from valid input."""
        from pydicom.data import get_testdata_file

        from tests.support.datasets import dataset_bytes

        for name, syntax in (("MR_small_implicit.dcm", 0), ("rtplan.dcm", 0), ("CT_small.dcm", 1),
                             ("MR_small_bigendian.dcm", 2), ("image_dfl.dcm", 3)):
            path = get_testdata_file(name, download=False)
            if path is None:
                continue
            summary = walk_dataset(io.BytesIO(dataset_bytes(path)), SYNTAXES[syntax])
            self.assertTrue(summary.sop_instance_uid, name)

    @_SETTINGS
    @given(data=mutated(dataset_seeds))
    def test_mutated_data_sets_raise_only_malformed_dataset(self, data: bytes) -> None:
        """A mutated data set walks or raises MalformedDataset only."""
        target_walk_dataset(data)

    @_SETTINGS
    @given(data=arbitrary())
    def test_arbitrary_bytes_raise_only_malformed_dataset(self, data: bytes) -> None:
        """Arbitrary bytes in any syntax walk or raise MalformedDataset only."""
        target_walk_dataset(data)
