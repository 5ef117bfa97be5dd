"""Tests for dicom-gateway.

Every property test runs under one Hypothesis profile: no per-example
deadline and no ``too_slow`` health check. Both are wall-clock heuristics:
on a 2-core CI machine shared by two trial workers, real gateway processes
and peers, a strategy's generation time says how loaded the machine was, not
whether the code under test is right, and a failure there would be a flake
rather than a finding. Examples stay random; a failing one is printed with
its reproduction blob.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "gateway",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("gateway")
