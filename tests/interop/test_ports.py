"""The test-port helper never hands out a port another part of the run may take."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ports


class FreePortTests(SynchronousTestCase):
    """``free_port`` draws from below the ephemeral range and reserves across processes."""

    def test_ports_are_below_the_ephemeral_range_and_never_repeated(self) -> None:
        """Fifty ports in a row are distinct, bindable and below ip_local_port_range (no outbound socket gets them)."""
        low = ports._ephemeral_low()
        handed = [ports.free_port() for _ in range(50)]
        self.assertEqual(len(set(handed)), 50)
        self.assertTrue(all(1024 <= p < low for p in handed), handed)

    def test_a_port_reserved_by_another_process_is_skipped(self) -> None:
        """With a run folder, a port whose reservation file exists (another worker's) is never returned."""
        folder = self.mktemp()
        os.makedirs(folder)
        low = ports._ephemeral_low()
        taken = set(range(max(1024, low - ports._POOL_SIZE), low - 10))
        for port in taken:
            open(os.path.join(folder, str(port)), "w").close()
        self.patch(os, "environ", {**os.environ, ports.RESERVATIONS_ENV: folder})
        self.patch(ports, "_handed", set())
        got = ports.free_port()
        self.assertNotIn(got, taken)
        self.assertTrue(os.path.exists(os.path.join(folder, str(got))))
