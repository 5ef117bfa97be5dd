"""Store-and-forward through a misbehaving network path (HARDENING C: F06-F09, F22).

The gateway's destination is pointed at :class:`~tests.support.faultproxy.FaultProxy`,
which forwards to the recording pynetdicom SCP of :mod:`tests.support.scp` and
swallows a response, cuts the connection at a chosen point, throttles the
bandwidth or watches PDU sizes.  The modality is DCMTK ``storescu``.

After each test the HARDENING C invariant is checked: every instance the
gateway acknowledged is at the destination or in the dead letters with a
reason, and duplicates at the destination never exceed the ambiguous faults
injected (at-least-once delivery).
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.faultproxy import P_DATA_TF, FaultPlan, FaultProxy, first_connections
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import (
    ForwardTestMixin,
    digests_by_sop_instance,
    make_series,
    part10_files,
)
from tests.support.invariants import check_forward_invariants
from tests.support.ports import free_port
from tests.support.scp import RecordingScp


def redeliveries(http_port: int, destination: str) -> float:
    """Read ``dicom_gateway_redeliveries_total`` for one destination from ``/metrics``.

    :param http_port: the gateway's HTTP port.
    :param destination: the destination's name.
    :returns: the counter's value (0 when absent).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^dicom_gateway_redeliveries_total\{destination="%s"\} (\S+)$'
                      % re.escape(destination), text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class ProxyForwardTestMixin(ForwardTestMixin):
    """Start fault proxies and check the HARDENING C invariant."""

    def proxy(self, target: RecordingScp, plan: FaultPlan | None = None, *,
              once: bool = True) -> FaultProxy:
        """Start a proxy to ``target``, stopped in a cleanup.

        :param target: the SCP behind the proxy.
        :param plan: the faults (``None``: none).
        :param once: apply them to the first connection only (else to all).
        :returns: the running proxy.
        """
        plan = plan or FaultPlan()
        chooser = first_connections(plan) if once else (lambda _n: plan)
        proxy = FaultProxy(target.port, chooser)
        self.addCleanup(proxy.stop)  # type: ignore[attr-defined]
        return proxy.start()

    def send_series(self, gateway: GatewayProcess, count: int, size: int) -> dict[str, str]:
        """Write a new series and send it to the gateway with ``storescu``.

        :param gateway: the gateway.
        :param count: number of instances.
        :param size: approximate size of each, in bytes.
        :returns: SOP Instance UID -> data set digest of what was sent.
        """
        source = Path(self.mktemp()).resolve()  # type: ignore[attr-defined]
        make_series(source, count, size)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())  # type: ignore[attr-defined]
        return digests_by_sop_instance(part10_files(source))

    def assert_nothing_lost(self, gateway: GatewayProcess, name: str, scp: RecordingScp,
                            sent: dict[str, str]) -> None:
        """Check every acknowledged instance is at ``scp`` (bytes intact) or dead with a reason.

        :param gateway: the gateway.
        :param name: the destination's name.
        :param scp: the destination's SCP.
        :param sent: SOP Instance UID -> digest of what the modality sent.
        """
        dead: dict[str, dict[str, object]] = {}
        for letter in gateway.dead_letters():
            if letter["destination"] == name:
                self.assertTrue(letter.get("dead_reason"), letter)  # type: ignore[attr-defined]
                dead[str(letter["instance"]["sop_instance_uid"])] = letter
        acknowledged = {r.sop_instance_uid: r.digest for r in scp.receipts
                        if r.status is not None and (r.status == 0 or r.status >> 12 == 0xB)}
        for uid, digest in sent.items():
            if uid in acknowledged:
                self.assertEqual(acknowledged[uid], digest, uid)  # type: ignore[attr-defined]
            else:
                self.assertIn(uid, dead, f"{uid} neither delivered nor dead")  # type: ignore[attr-defined]


class AmbiguousOutcomeTests(ProxyForwardTestMixin, TestCase):
    """A send whose outcome the gateway cannot know is retried, with at most one duplicate."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 60

    def _send_with_fault(self, plan: FaultPlan) -> tuple[RecordingScp, FaultProxy]:
        """Send 3 instances through a proxy faulting the first connection; all must be delivered.

        :param plan: the fault of the first connection.
        :returns: the SCP and the proxy, for more checks.
        """
        recorder = self.recorder()
        proxy = self.proxy(recorder, plan)
        http_port = free_port()
        gateway = self.start_gateway(
            http={"host": "127.0.0.1", "port": http_port},
            destinations={"pacs": dicom_destination(
                proxy.port, recorder.ae_title, max_associations=1,
                timeouts={"connect": "5s", "acse": "10s", "dimse": "2s"})},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        self.assertEqual(gateway.cli("queue", "pause", "pacs").returncode, 0)
        sent = self.send_series(gateway, 3, 8 * 1024)
        self.assertEqual(gateway.cli("queue", "resume", "pacs").returncode, 0)
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows())["pacs"]["delivered"] == 3
                             and r, 40, "3 delivered")
        self.assertEqual(rows["pacs"]["dead"], 0)
        self.assertEqual(set(recorder.successes()), set(sent))
        # One ambiguous fault injected: at most one extra copy at the SCP.
        self.assertLessEqual(recorder.duplicates(), 1)
        self.assertGreaterEqual(proxy.connections, 2)
        # The ambiguous attempt is counted as a redelivery once delivered (HARDENING F06, F07).
        self.assertEqual(redeliveries(http_port, "pacs"), 1.0)
        self.assert_nothing_lost(gateway, "pacs", recorder, sent)
        check_forward_invariants(self, gateway, destinations={"pacs": recorder},
                                 ambiguous_faults={"pacs": 1}, accepted=3)
        return recorder, proxy

    def test_swallowed_store_response_times_out_and_is_retried_with_at_most_one_duplicate(self) -> None:
        """F06: the SCP gets the data set but its C-STORE-RSP never arrives; DIMSE timeout, retry, delivered."""
        recorder, proxy = self._send_with_fault(FaultPlan(drop_reply_after_pdus=1))
        self.assertEqual(proxy.swallowed, 1)
        # The swallowed instance did reach the SCP on the first association.
        self.assertEqual(recorder.receipts[0].association, 1)

    def test_connection_closed_after_the_last_fragment_is_retried_with_at_most_one_duplicate(self) -> None:
        """F07: TCP closed right after the data set's last fragment, before the RSP: retried, delivered."""
        _recorder, proxy = self._send_with_fault(FaultPlan(cut_after_last_data_fragment=True))
        self.assertEqual(proxy.cuts, 1)


class SlowDestinationTests(ProxyForwardTestMixin, TestCase):
    """A throttled destination does not hold back a healthy one."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 90

    def test_destination_throttled_to_50_kb_per_second_does_not_delay_a_healthy_one(self) -> None:
        """F08: the healthy destination gets all 20 instances while the 50 KB/s one is still far from done."""
        slow_scp = self.recorder(ae_title="SLOW")
        fast_scp = self.recorder(ae_title="FAST")
        proxy = self.proxy(slow_scp, FaultPlan(bandwidth=50_000), once=False)
        gateway = self.start_gateway(
            destinations={"slow": dicom_destination(proxy.port, slow_scp.ae_title),
                          "fast": dicom_destination(fast_scp.port, fast_scp.ae_title)},
            routes=[{"name": "all", "forward": ["slow", "fast"]}],
        )
        start = time.monotonic()
        # 20 x 40 KB = 800 KB: at least 8 s at 50 KB/s even over two associations.
        sent = self.send_series(gateway, 20, 40 * 1024)
        self.wait_for(gateway, lambda: len(fast_scp.successes()) == 20, 15,
                      "the healthy destination to get 20 instances")
        fast_done = time.monotonic() - start
        self.assertLess(len(slow_scp.successes()), 20)
        self.wait_for(gateway, lambda: len(slow_scp.successes()) == 20, 60,
                      "the slow destination to get 20 instances")
        slow_done = time.monotonic() - start
        self.assertLess(fast_done, slow_done / 2, (fast_done, slow_done))
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows())["slow"]["delivered"] == 20
                             and r["fast"]["delivered"] == 20 and r, 10, "40 delivered")
        self.assertEqual((rows["slow"]["dead"], rows["fast"]["dead"]), (0, 0))
        self.assertEqual((slow_scp.duplicates(), fast_scp.duplicates()), (0, 0))
        # The slow destination's concurrency cap (max_associations: 2) held.
        self.assertLessEqual(proxy.peak_open, 2)
        self.assertGreaterEqual(proxy.connections, 1)
        self.assert_nothing_lost(gateway, "slow", slow_scp, sent)
        self.assert_nothing_lost(gateway, "fast", fast_scp, sent)
        check_forward_invariants(self, gateway, destinations={"slow": slow_scp, "fast": fast_scp},
                                 accepted=20)


#: The gateway's own cap on a P-DATA-TF variable field (``gateway.associate.SEND_CAP``).
GATEWAY_SEND_CAP = 1024 * 1024


class MaxPduScp(RecordingScp):
    """A :class:`RecordingScp` advertising a chosen maximum PDU length.

    :param max_pdu: the Maximum Length to announce (PS3.8 D.1; 0 = no limit).
    :param kwargs: :class:`RecordingScp` arguments.
    """

    def __init__(self, max_pdu: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_pdu = max_pdu

    def start(self) -> MaxPduScp:
        """Start, then make every association announce :attr:`max_pdu`.

        :returns: this object.
        """
        super().start()
        # pynetdicom reads the AE's setting for each association it accepts.
        self._server.ae.maximum_pdu_size = self.max_pdu
        return self


class FragmentationTests(ProxyForwardTestMixin, TestCase):
    """The gateway honours the destination's maximum PDU length."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 60

    def _send_through(self, max_pdu: int, size: int) -> tuple[list[int], MaxPduScp, dict[str, str]]:
        """Send 3 instances to an SCP announcing ``max_pdu``, through a watching proxy.

        :param max_pdu: the SCP's Maximum Length.
        :param size: approximate size of each instance.
        :returns: the P-DATA-TF lengths the gateway sent, the SCP, what was sent.
        """
        scp = MaxPduScp(max_pdu)
        self.addCleanup(scp.stop)
        scp.start()
        proxy = self.proxy(scp)
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(proxy.port, scp.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        sent = self.send_series(gateway, 3, size)
        self.wait_for(gateway, lambda: len(scp.successes()) == 3, 30, "3 instances")
        self.assertEqual({r.sop_instance_uid: r.digest for r in scp.receipts}, sent)
        self.assertEqual(scp.duplicates(), 0)
        self.assert_nothing_lost(gateway, "pacs", scp, sent)
        check_forward_invariants(self, gateway, destinations={"pacs": scp}, accepted=3)
        return [pdu.length for pdu in proxy.client_pdus if pdu.pdu_type == P_DATA_TF], scp, sent

    def test_destination_max_pdu_zero_gets_p_data_within_the_gateway_own_cap(self) -> None:
        """F09: a peer announcing 0 (no limit) gets P-DATA-TF PDUs no larger than the gateway's own 1 MiB cap."""
        p_data, _scp, _sent = self._send_through(0, 1536 * 1024)
        self.assertLessEqual(max(p_data), GATEWAY_SEND_CAP, sorted(set(p_data)))
        # 1.5 MB data sets need more than one PDU each under a 1 MiB cap.
        self.assertGreater(len(p_data), 6)

    def test_destination_max_pdu_4096_gets_no_larger_p_data_and_identical_bytes(self) -> None:
        """F09: every P-DATA-TF from the gateway is <= 4096 bytes long and the data sets arrive byte-identical."""
        p_data, scp, sent = self._send_through(4096, 20 * 1024)
        # 3 x 20 KB cannot fit in fewer than 15 PDUs of 4 KB.
        self.assertGreaterEqual(len(p_data), 15)
        self.assertLessEqual(max(p_data), 4096)
        self.assertEqual(len(scp.receipts), len(sent))


class PeerQuirkTests(ProxyForwardTestMixin, TestCase):
    """A peer closing the connection after every instance loses nothing."""

    skip = dcmtk.skip_reason("storescu")
    timeout = 90

    def test_connection_closed_after_each_store_response_delivers_all_20(self) -> None:
        """F22: TCP closed after every C-STORE-RSP: 20 instances arrive once each, one per association, none dead."""
        recorder = self.recorder()
        proxy = self.proxy(recorder, FaultPlan(close_after_response=True), once=False)
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(proxy.port, recorder.ae_title)},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        sent = self.send_series(gateway, 20, 8 * 1024)
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows())["pacs"]["delivered"] == 20
                             and r, 75, "20 delivered")
        self.assertEqual(rows["pacs"]["dead"], 0)
        self.assertEqual(gateway.dead_letters(), [])
        self.assertEqual(set(recorder.successes()), set(sent))
        # The cut comes after the response: no instance is stored twice.
        self.assertEqual(recorder.duplicates(), 0)
        # Each association carried exactly one instance.
        self.assertEqual(len({r.association for r in recorder.receipts}), 20)
        self.assertGreaterEqual(proxy.cuts, 20)
        self.assert_nothing_lost(gateway, "pacs", recorder, sent)
        # The next instance goes out right after a response; if the proxy's close arrives after it
        # started, that send is ambiguous though the recorder never saw it: counted as a redelivery,
        # never stored twice (issue 13). How often the close wins that race depends on the machine's
        # load (3 of 20 on a busy CI run), so the bound is structural, not a guess: every
        # association carries one success and is then cut, so at most one send per cut but the
        # last can be caught by it.
        check_forward_invariants(self, gateway, destinations={"pacs": recorder}, accepted=20,
                                 ambiguous_faults={"pacs": proxy.cuts - 1}, ambiguous_may_be_lost=True)
