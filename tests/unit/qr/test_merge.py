"""Tests for :mod:`gateway.qr.merge`: duplicates, precedence, bounds and ``max_results``."""

from __future__ import annotations

import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from gateway.qr.merge import Merge, key_digest


def study(uid: str, source: str) -> tuple[tuple[str], bytes]:
    """A STUDY-level key and an identifier naming its source."""
    return (uid,), f"{uid}@{source}".encode()


class MergeTests(SynchronousTestCase):
    """Streaming merge of two or three sources."""

    def test_first_source_streams_and_its_duplicates_win(self) -> None:
        """Matches of the first source leave at once; the second's are held, then relayed without duplicates."""
        merge = Merge(["a", "b"], max_results=0)
        self.assertEqual(merge.match("b", *study("1", "b")), [])
        self.assertEqual(merge.match("a", *study("1", "a")), [b"1@a"])
        self.assertEqual(merge.match("b", *study("2", "b")), [])
        self.assertEqual(merge.match("a", *study("3", "a")), [b"3@a"])
        self.assertEqual(merge.source_done("a"), [b"2@b"])
        self.assertEqual(merge.match("b", *study("3", "b")), [])
        self.assertEqual(merge.match("b", *study("4", "b")), [b"4@b"])
        self.assertEqual((merge.relayed, merge.duplicates), (4, 2))

    def test_pending_status_is_kept_through_the_hold(self) -> None:
        """``offer``/``finish`` keep each match's 0xFF00/0xFF01 (PS3.4 C.4.1.1.4), held or not."""
        merge = Merge(["a", "b"], max_results=0)
        self.assertEqual(merge.offer("b", ("1",), b"1@b", 0xFF01), [])
        self.assertEqual(merge.offer("a", ("2",), b"2@a", 0xFF01), [(b"2@a", 0xFF01)])
        self.assertEqual(merge.offer("a", ("3",), b"3@a"), [(b"3@a", 0xFF00)])
        self.assertEqual(merge.finish("a"), [(b"1@b", 0xFF01)])

    def test_a_failed_first_source_releases_the_second(self) -> None:
        """A source that ends (failed or left out) lets the next one's held matches go."""
        merge = Merge(["a", "b", "c"], max_results=0)
        merge.match("c", *study("9", "c"))
        merge.match("b", *study("8", "b"))
        self.assertEqual(merge.source_done("a"), [b"8@b"])
        self.assertEqual(merge.source_done("b"), [b"9@c"])
        self.assertFalse(merge.all_done)
        merge.source_done("c")
        self.assertTrue(merge.all_done)

    def test_max_results_relays_the_limit_then_flags(self) -> None:
        """Exactly ``max_results`` matches leave; the next sets ``over_limit`` (the query then ends 0xA700)."""
        merge = Merge(["a"], max_results=2)
        out = [merge.match("a", *study(str(n), "a")) for n in range(2)]
        self.assertEqual(out, [[b"0@a"], [b"1@a"]])
        self.assertFalse(merge.over_limit)
        self.assertEqual(merge.match("a", *study("2", "a")), [])
        self.assertTrue(merge.over_limit)

    def test_duplicates_do_not_count_towards_max_results(self) -> None:
        """A duplicate is dropped without using up the limit."""
        merge = Merge(["a", "b"], max_results=1)
        merge.source_done("a")
        merge.match("b", *study("1", "b"))
        self.assertEqual(merge.match("b", *study("1", "b")), [])
        self.assertFalse(merge.over_limit)

    def test_hold_is_bounded_and_releases_first_come(self) -> None:
        """Past ``hold_limit`` the oldest held match is relayed at once, counted as precedence lost."""
        merge = Merge(["a", "b"], max_results=0, hold_limit=2)
        self.assertEqual(merge.match("b", *study("1", "b")), [])
        self.assertEqual(merge.match("b", *study("2", "b")), [])
        self.assertEqual(merge.match("b", *study("3", "b")), [b"1@b"])
        self.assertEqual((merge.held, merge.precedence_lost), (2, 1))
        self.assertEqual(merge.match("a", *study("1", "a")), [])

    def test_matches_without_a_key_are_never_duplicates(self) -> None:
        """A match with no unique key is relayed each time."""
        merge = Merge(["a"], max_results=0)
        self.assertEqual(merge.match("a", None, b"x") + merge.match("a", None, b"x"), [b"x", b"x"])

    def test_first_mode_does_not_dedupe(self) -> None:
        """With ``dedupe=False`` (query.mode first) nothing is remembered."""
        merge = Merge(["a"], max_results=0, dedupe=False)
        self.assertEqual(merge.match("a", *study("1", "a")) + merge.match("a", *study("1", "a")), [b"1@a", b"1@a"])

    def test_patient_key_with_issuer_differs_from_without(self) -> None:
        """Patient ID with and without an issuer are different keys (PS3.4 C.6.1.1.2)."""
        self.assertNotEqual(key_digest(("123", "")), key_digest(("123", "HOSP")))


class MemoryTests(SynchronousTestCase):
    """What the duplicate set costs."""

    def test_hundred_thousand_keys_cost_under_fifteen_megabytes(self) -> None:
        """100,000 distinct Study UIDs cost about 10 MB in the set (digests only, identifiers never kept)."""
        merge = Merge(["a"], max_results=0)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(100_000):
                merge.match("a", (f"1.2.826.0.1.3680043.10.543.{n:030d}",), b"")
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(merge.relayed, 100_000)
        self.assertLess(used, 15 * 1024 * 1024)
        print(f"\n  duplicate set: {used / 100_000:.0f} bytes per result, {used / 1e6:.1f} MB per 100k")
