"""Tests for :mod:`gateway.route`: the pure routing decision.

At this stage a route matches every instance, so the decision is the
route order's (route, destination) pairs; the tests pin that fan-out across
routes keeps every pair, a destination repeated inside one route counts once,
and no route at all means "unrouted" (kept, never dropped).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import RouteConfig
from gateway.route import RoutingContext, RoutingDecision, evaluate
from gateway.validate import DatasetSummary

SUMMARY = DatasetSummary(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    sop_instance_uid="1.2.3.4",
    study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.1",
    modality="CT",
    element_count=10,
    pixel_data_offset=None,
)
CONTEXT = RoutingContext(calling_ae_title="CT01", called_ae_title="DICOMGW", source_address="10.0.0.1", listener="dicom")


class EvaluateTests(SynchronousTestCase):
    """``evaluate`` turns routes into one (route, destination) pair per entry to journal."""

    def test_one_route_gives_one_pair_per_destination_in_order(self) -> None:
        """A route forwarding to two destinations yields both pairs, in the route's order."""
        decision = evaluate(SUMMARY, CONTEXT, [RouteConfig("all", ("b", "a"))])
        self.assertEqual(
            decision, RoutingDecision(entries=(("all", "b"), ("all", "a")), unrouted=False, matched=("all",))
        )

    def test_fan_out_across_routes_keeps_every_pair(self) -> None:
        """Two routes naming the same destination give two entries (one per route), routes in order."""
        decision = evaluate(SUMMARY, CONTEXT, [RouteConfig("r1", ("pacs",)), RouteConfig("r2", ("pacs", "folder"))])
        self.assertEqual(decision.entries, (("r1", "pacs"), ("r2", "pacs"), ("r2", "folder")))
        self.assertFalse(decision.unrouted)

    def test_destination_repeated_within_a_route_counts_once(self) -> None:
        """A destination listed twice in one route gets one entry for that route."""
        decision = evaluate(SUMMARY, CONTEXT, [RouteConfig("r", ("pacs", "pacs"))])
        self.assertEqual(decision.entries, (("r", "pacs"),))

    def test_no_routes_means_unrouted(self) -> None:
        """With no route configured the decision has no entries and says unrouted."""
        decision = evaluate(SUMMARY, CONTEXT, [])
        self.assertEqual(decision, RoutingDecision(entries=(), unrouted=True))

    def test_route_with_empty_forward_list_leaves_the_instance_unrouted(self) -> None:
        """A route that forwards nowhere does not count as routing the instance."""
        decision = evaluate(SUMMARY, CONTEXT, [RouteConfig("nowhere", ())])
        self.assertTrue(decision.unrouted)
