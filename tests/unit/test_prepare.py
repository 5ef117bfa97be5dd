"""Tests for :func:`gateway.prepare.remove_copies` (the morphed copies of finished instances)."""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from gateway.prepare import remove_copies


class RemoveCopiesTests(SynchronousTestCase):
    """Only the instance's own copies go; nothing is cached per instance id."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def touch(self, name: str) -> None:
        with open(os.path.join(self.dir, name), "wb"):
            pass

    def test_removes_every_copy_of_the_instance_and_nothing_else(self) -> None:
        """Copies of ``a1`` and ``b2`` go in one call; ``a10``'s copy, a temp file of ``a1`` and an unrelated file stay."""
        for name in ("a1.0123abcd.dcm", "a1.ffff0000.dcm", "b2.0123abcd.dcm", "a10.0123abcd.dcm",
                     "a1.0123abcd.dcm.tmp", "other"):
            self.touch(name)
        self.assertEqual(remove_copies(self.dir, ["a1", "b2"]), 3)
        self.assertEqual(sorted(os.listdir(self.dir)), ["a1.0123abcd.dcm.tmp", "a10.0123abcd.dcm", "other"])

    def test_missing_folder_is_nothing_to_remove(self) -> None:
        """A morphed folder that does not exist (no route morphs) removes nothing."""
        self.assertEqual(remove_copies(os.path.join(self.dir, "absent"), ["a1"]), 0)

    def test_many_instance_ids_do_not_grow_the_pattern_cache(self) -> None:
        """1,000 distinct ids leave fnmatch's compiled-pattern cache as it was (a 2 KB-per-instance growth seen in the soak)."""
        cache = getattr(fnmatch, "_compile_pattern")
        before = cache.cache_info().currsize
        for n in range(1000):
            remove_copies(self.dir, [f"id{n:06d}"])
        self.assertEqual(cache.cache_info().currsize, before)
