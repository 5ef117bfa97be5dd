"""``dicom-gateway check``: what the routes would do with given files.

For each file it reports the routes whose condition holds, the destinations
each would reach, and every element each route's morph would change (old ->
new), without writing anything: morphs are applied to a copy of the header
in memory. The association context (calling AE title, source address...)
comes from the command line, so an administrator can test rules for a
modality before it sends anything.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any, Sequence

from gateway.config.schema import GatewayConfig
from gateway.route import RoutingContext, evaluate


def check_file(config: GatewayConfig, path: str, context: RoutingContext) -> dict[str, Any]:
    """Route one file as the gateway would, and list each route's changes.

    :returns: a JSON-able report: file, SOP instance UID, matched routes with
        destinations and changes, and the outcome (reject, drop, unrouted, errors).
    """
    from gateway.morph import MorphError
    from gateway.parse import read_header

    report: dict[str, Any] = {"file": path}
    try:
        header = read_header(path)
    except Exception as e:
        report["error"] = f"cannot read the file: {e}"
        return report
    dataset = header.dataset
    report["sop_instance_uid"] = str(dataset.get("SOPInstanceUID", ""))
    report["modality"] = str(dataset.get("Modality", ""))
    destinations = [d.name for d in config.destinations]
    decision = evaluate(dataset, context, config.routes, destinations)
    by_route: dict[str, list[str]] = {}
    for route_name, destination in decision.entries:
        by_route.setdefault(route_name, []).append(destination)
    routes = []
    for route in config.routes:
        if route.name not in decision.matched:
            continue
        entry: dict[str, Any] = {"route": route.name, "destinations": by_route.get(route.name, [])}
        if route.drop:
            entry["action"] = "drop"
        elif route.reject is not None:
            entry["action"] = f"reject 0x{route.reject:04X}"
        if route.morph is not None:
            work = copy.deepcopy(dataset)
            try:
                changes = route.morph.apply(work, context)
                entry["changes"] = [{"path": c.path, "old": c.old, "new": c.new} for c in changes]
            except MorphError as e:
                entry["morph_error"] = str(e)
        routes.append(entry)
    report["routes"] = routes
    report["rejected"] = None if decision.reject is None else f"0x{decision.reject:04X} by route {decision.reject_route}"
    report["dropped"] = decision.dropped
    report["unrouted"] = decision.unrouted
    report["errors"] = list(decision.errors)
    return report


def _value(text: str | None) -> str:
    return "(absent)" if text is None else repr(text)


def format_report(report: dict[str, Any]) -> str:
    """The text form of :func:`check_file`'s report."""
    lines = [f"{report['file']}"]
    if "error" in report:
        lines.append(f"  error: {report['error']}")
        return "\n".join(lines)
    lines[0] += f"  ({report.get('modality') or '?'}, {report.get('sop_instance_uid')})"
    if report["rejected"]:
        lines.append(f"  rejected with {report['rejected']}: the modality gets this failure status")
    for route in report["routes"]:
        target = route.get("action") or ("-> " + ", ".join(route["destinations"]) if route["destinations"] else "-> (nothing)")
        lines.append(f"  route {route['route']} {target}")
        for change in route.get("changes", []):
            new = "(deleted)" if change["new"] is None else repr(change["new"])
            lines.append(f"      {change['path']}: {_value(change['old'])} -> {new}")
        if "morph_error" in route:
            lines.append(f"      morph would fail: {route['morph_error']} (the copy would be dead-lettered)")
    if report["dropped"]:
        lines.append("  dropped (acknowledged, not kept)")
    if report["unrouted"]:
        lines.append("  no route forwards it: kept in the spool's unrouted/ area")
    for error in report["errors"]:
        lines.append(f"  routing error: {error}")
    return "\n".join(lines)


def check_files(
    config: GatewayConfig,
    paths: Sequence[str],
    *,
    calling_ae_title: str = "",
    called_ae_title: str = "",
    source_ip: str = "127.0.0.1",
    listener: str = "",
) -> list[dict[str, Any]]:
    """:func:`check_file` for every path (folders are walked), with one association context."""
    context = RoutingContext(
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title or config.ae_title,
        source_address=source_ip,
        listener=listener or (config.listen[0].name if config.listen else ""),
        listener_port=config.listen[0].port if config.listen else 0,
        received_at=time.time(),
    )
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, names in os.walk(path):
                files.extend(os.path.join(root, name) for name in sorted(names))
        else:
            files.append(path)
    return [check_file(config, path, context) for path in files]
