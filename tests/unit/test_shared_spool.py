"""File names on a spool shared by several nodes (issue 14): owned, unique, and found again.

:mod:`gateway.slots` prefixes the ids a node makes with its name
(``gw-1.site~<uuid>``); the spool's start-up clean-up of ``incoming/`` then
leaves other nodes' files alone, and the morphed copies
(``<id>.<digest>.dcm``) are still found by id although node names may hold dots.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.durable import FileOps
from gateway.prepare import copy_path, remove_copies
from gateway.slots import SlotPool, make_slots, owner_of, owner_prefix
from gateway.spool import Spool


class OwnerTests(SynchronousTestCase):
    """Owner prefixes and their parsing."""

    def test_prefix_and_owner(self) -> None:
        """A shared spool's id starts with ``<node>~``; an id without ``~`` has no owner."""
        self.assertEqual(owner_prefix("gw-1.site"), "gw-1.site~")
        self.assertEqual(owner_prefix(""), "")
        self.assertEqual(owner_of("gw-1.site~0123abcd"), "gw-1.site")
        self.assertEqual(owner_of("0123abcd"), "")

    def test_slots_carry_the_prefix(self) -> None:
        """Batches and the fallback id of an empty pool are both named after the node."""
        folder = self.mktemp()
        os.makedirs(folder)
        made = make_slots(folder, 3, FileOps(), "gw-2~")
        self.assertTrue(all(slot.startswith("gw-2~") and len(slot) == 5 + 32 for slot in made))
        self.assertEqual(sorted(os.listdir(folder)), sorted(slot + ".dcm" for slot in made))
        pool = SlotPool(folder, FileOps(), SynchronousRunner(), batch=2, low_water=0, prefix="gw-2~")
        slot, durable = pool.take()
        self.assertEqual((slot.startswith("gw-2~"), durable), (True, False))

    def test_unshared_ids_are_unchanged(self) -> None:
        """Without a prefix, slot ids stay bare uuid4 hex strings (today's names)."""
        folder = self.mktemp()
        os.makedirs(folder)
        [slot] = make_slots(folder, 1, FileOps())
        self.assertRegex(slot, r"^[0-9a-f]{32}$")


class SpoolRecoverTests(SynchronousTestCase):
    """``Spool.recover`` on a shared spool removes only this node's leftovers in ``incoming/``."""

    def test_other_nodes_probe_files_stay(self) -> None:
        """gw-a's leftover probe goes; gw-b's probe in progress stays."""
        root = self.mktemp()
        spool = Spool(
            root, SynchronousRunner(), implementation_class_uid="1.2.3", implementation_version_name="T",
            max_instance_size=1 << 20, owner="gw-a",
        )
        spool.probe()
        incoming = os.path.join(root, "incoming")
        mine = os.path.join(incoming, "gw-a~probe-1.part")
        theirs = os.path.join(incoming, "gw-b~probe-2.part")
        for path in (mine, theirs):
            with open(path, "wb") as f:
                f.write(b"probe\n")
        self.assertEqual(spool.recover(), [mine])
        self.assertTrue(os.path.exists(theirs))


class CopiesTests(SynchronousTestCase):
    """Morphed copies of instances whose ids hold dots (a node named ``gw-1.site``)."""

    def test_copies_of_dotted_ids_are_removed_and_others_kept(self) -> None:
        """The id is the name up to its last dot but one; a neighbour's copies stay."""
        folder = self.mktemp()
        os.makedirs(folder)
        gone = copy_path(folder, "gw-1.site~aa", "d1")
        kept = copy_path(folder, "gw-1.site~bb", "d1")
        bare = copy_path(folder, "cc", "d2")
        for path in (gone, kept, bare):
            with open(path, "wb") as f:
                f.write(b"x")
        self.assertEqual(remove_copies(folder, ["gw-1.site~aa", "cc"]), 2)
        self.assertEqual(os.listdir(folder), [os.path.basename(kept)])
