"""Run the fuzz targets of ``tests/unit/fuzz`` for a given time; print examples/s and crashes.

Usage (from the repository root)::

    .venv/bin/python bench/fuzz.py --seconds 600            # every target, time shared
    .venv/bin/python bench/fuzz.py --seconds 60 --target walk_dataset --seed 7

The CI runs (``python -m twisted.trial tests.unit.fuzz``) use hypothesis with
a bounded example budget; this script runs the very same target functions
(:data:`tests.unit.fuzz.TARGETS`) in a plain loop, which is several times
faster per example: each input is a seed of the target's corpus with random
:func:`~tests.unit.fuzz.mutate` operations, or (one in eight) random bytes.

A crash is any exception other than the target's documented error. Each
distinct crash (by exception type and the line that raised) is written to
``--crash-dir`` as ``<target>-<n>.bin`` and printed; turn it into a
regression test in ``tests/unit/fuzz/`` (the issue's rule: every crash it
ever finds becomes one). The exit status is 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.fuzz import TARGETS, mutate  # noqa: E402


def _input(rng: random.Random, seeds: tuple[bytes, ...]) -> bytes:
    """Draw one fuzz input.

    :param rng: the random source.
    :param seeds: the target's corpus.
    :returns: a mutated seed, or random bytes one time in eight.
    """
    if rng.random() < 0.125 or not seeds:
        return rng.randbytes(rng.randrange(0, 1024))
    operations = [(rng.randrange(8), rng.randrange(1 << 16), rng.randrange(256))
                  for _ in range(rng.randrange(1, 9))]
    return mutate(rng.choice(seeds), operations)


def run(name: str, seconds: float, rng: random.Random, crash_dir: Path) -> tuple[int, int]:
    """Fuzz one target for ``seconds``.

    :param name: a key of :data:`TARGETS`.
    :param seconds: the time budget.
    :param rng: the random source.
    :param crash_dir: where crashing inputs are written.
    :returns: (examples run, distinct crashes).
    """
    target, corpus = TARGETS[name]
    seeds = corpus()
    seen: set[tuple[str, str]] = set()
    examples = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            data = _input(rng, seeds)
            examples += 1
            try:
                target(data)
            except Exception as error:  # noqa: BLE001 - every escape is a finding
                where = traceback.extract_tb(error.__traceback__)[-1]
                key = (type(error).__name__, f"{where.filename}:{where.lineno}")
                if key in seen:
                    continue
                seen.add(key)
                crash_dir.mkdir(parents=True, exist_ok=True)
                path = crash_dir / f"{name}-{len(seen)}.bin"
                path.write_bytes(data)
                print(f"CRASH {name}: {key[0]}: {error} at {key[1]}\n  input {path} ({len(data)} bytes): "
                      f"{data[:64]!r}", flush=True)
    return examples, len(seen)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and fuzz.

    :param argv: the arguments (default ``sys.argv[1:]``).
    :returns: 0 if nothing crashed, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total time budget (shared by targets)")
    parser.add_argument("--target", choices=sorted(TARGETS), action="append",
                        help="a target to run (repeatable; default all)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time based)")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"),
                        help="where crashing inputs are written")
    args = parser.parse_args(argv)
    names = args.target or sorted(TARGETS)
    seed = args.seed if args.seed is not None else time.time_ns() & 0xFFFFFFFF
    rng = random.Random(seed)
    print(f"fuzzing {', '.join(names)} for {args.seconds:.0f} s (seed {seed})", flush=True)
    total_crashes = 0
    share = args.seconds / len(names)
    for name in names:
        started = time.monotonic()
        examples, crashes = run(name, share, rng, args.crash_dir)
        elapsed = time.monotonic() - started
        total_crashes += crashes
        print(f"{name:<15} {examples:>10} examples in {elapsed:6.1f} s = {examples / elapsed:>8.0f}/s, "
              f"{crashes} crash(es)", flush=True)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
