"""One throttled destination beside two healthy ones (HARDENING F08), the deterministic half.

The row: one destination throttled to 50 KB/s, two healthy ones; the healthy
ones lose < 10% throughput, inbound C-STORE latency is unchanged until the
spool watermark, and the per-destination concurrency cap is respected.

Throughput and latency figures on a loaded 2-core CI machine are too noisy
for a test (``bench/slow.py`` measures the healthy destinations' rate with
and without the slow one, interleaved, and reports the loss with its
spread). What does not depend on timing is checked here, against the real
gateway process, with every destination behind a
:class:`~tests.support.faultproxy.FaultProxy` (only the slow one's
throttles) so each one's open connections are counted:

- both healthy destinations receive every instance, byte-identical, once,
  while the throttled one still holds a backlog it cannot have cleared at
  50 KB/s per connection (physics, not a timer: the bytes it still needs take
  longer than the wait allowed);
- each destination's ``max_associations`` is respected: at most 2 open
  connections through each proxy, and the slow one does reach 2 (the
  instances span four studies, so the gateway would open more if the cap
  did not hold);
- a modality sending meanwhile is answered 0x0000 for every instance (the
  slow destination's backlog does not block intake);
- in the end the slow destination has everything too, nothing is dead, and
  the HARDENING C invariants hold for all three.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from twisted.trial.unittest import TestCase

from gateway.queue.sqlite import study_hash
from tests.interop.test_forward_proxy import ProxyForwardTestMixin
from tests.support import dcmtk
from tests.support.faultproxy import FaultPlan
from tests.support.gateway_process import dicom_destination
from tests.support.interop import digests_by_sop_instance, make_series, part10_files, pynetdicom_store
from tests.support.invariants import check_forward_invariants

#: The row's throttle, bytes/s per connection.
SLOW_RATE = 50_000

#: ``max_associations`` of every destination.
CAP = 2


def _studies_per_slot(slots: int, per_slot: int) -> list[str]:
    """New Study Instance UIDs, ``per_slot`` for each of the destination's association slots.

    :param slots: the destination's ``max_associations`` (its lease shards).
    :param per_slot: studies wanted per slot.
    :returns: ``slots * per_slot`` UIDs.
    """
    wanted: dict[int, list[str]] = {k: [] for k in range(slots)}
    while any(len(uids) < per_slot for uids in wanted.values()):
        uid = generate_uid()
        shard = study_hash(uid) % slots
        if len(wanted[shard]) < per_slot:
            wanted[shard].append(uid)
    return [uid for uids in wanted.values() for uid in uids]


class SlowBesideTwoHealthyTests(ProxyForwardTestMixin, TestCase):
    """A destination throttled to 50 KB/s holds back neither two healthy ones nor intake."""

    timeout = 150

    def test_two_healthy_destinations_get_everything_while_the_throttled_one_drains_within_its_cap(self) -> None:
        """F08: healthy ones complete while the 50 KB/s one has a backlog; caps of 2 held; intake answers 0x0000 meanwhile."""
        scps = {name: self.recorder(ae_title=name.upper()) for name in ("slow", "fast1", "fast2")}
        proxies = {name: self.proxy(scp, FaultPlan(bandwidth=SLOW_RATE) if name == "slow" else None, once=False)
                   for name, scp in scps.items()}
        gateway = self.start_gateway(
            destinations={name: dicom_destination(proxies[name].port, scp.ae_title, max_associations=CAP,
                                                  batch_size=50)
                          for name, scp in scps.items()},
            routes=[{"name": "all", "forward": list(scps)}],
        )
        # 24 x 32 KB over four studies: 786 KB, at least 7.8 s through two 50 KB/s connections.
        # A study always travels through the slot its hash names (crc32 % slots), so the
        # studies are chosen two per slot: with random UIDs, all four landed on one slot
        # one run in eight and the slow destination never needed its second association.
        source = Path(self.mktemp()).resolve()
        for study, uid in enumerate(_studies_per_slot(CAP, 2)):
            make_series(source, 6, 32 * 1024, prefix=f"s{study}-", study_instance_uid=uid)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        sent = digests_by_sop_instance(part10_files(source))
        # A second modality sends while the slow destination is busy: every instance is acknowledged.
        more = [dcmread(path) for path in part10_files(source)[:8]]
        for dataset in more:
            dataset.SOPInstanceUID = generate_uid()
        statuses = pynetdicom_store(gateway.port, more)
        self.assertEqual(statuses, [0x0000] * len(more))
        total = len(sent) + len(more)
        for name in ("fast1", "fast2"):
            self.wait_for(gateway, lambda name=name: len(scps[name].successes()) == total, 60,
                          f"{name} to get {total} instances")
        # At 50 KB/s per connection and 2 connections the slow one needs >= 10 s for
        # all 32 (1 MB); had it held the healthy ones back, they could not be complete now.
        slow_done = len(scps["slow"].successes())
        self.assertLess(slow_done, total, "the throttled destination finished as early as the healthy ones")
        self.assertEqual(gateway.queue_rows()["slow"]["dead"], 0)
        self.wait_for(gateway, lambda: len(scps["slow"].successes()) == total, 90,
                      f"the throttled destination to get {total} instances")
        rows = self.wait_for(gateway, lambda: self.idle(gateway) and gateway.queue_rows(), 20, "all delivered")
        for name, scp in scps.items():
            self.assertEqual((rows[name]["delivered"], rows[name]["dead"]), (total, 0), name)
            self.assertEqual(scp.duplicates(), 0, name)
            self.assert_nothing_lost(gateway, name, scp, sent)
            # The per-destination concurrency cap held.
            self.assertLessEqual(proxies[name].peak_open, CAP, name)
        # The cap was reached where there was a backlog: the check above could have failed.
        self.assertEqual(proxies["slow"].peak_open, CAP)
        check_forward_invariants(self, gateway, destinations=scps, accepted=total)
