"""Benchmark the data set structure walk: the file walk against the walk fed as the bytes arrive.

Prints CPU microseconds per instance (``time.process_time``, the median of
``--rounds`` rounds of ``--count`` walks each) for one instance of
``--size`` bytes (512 KiB by default, the issue 13 reference instance):

* ``file walk before issue 13``: the file walk as it was
  (:mod:`tests.support.filewalk_reference`) over the Part 10 file in the page
  cache (open, seek past the meta, walk: what intake did after the last
  fragment);
* ``file walk now``: :func:`gateway.validate.walk_dataset`, which feeds the
  file to a walker (recovery's path);
* ``fed 16 KiB`` / ``fed 64 KiB``: a :class:`~gateway.validate.DatasetWalker`
  fed the data set bytes in fragments of that size (16 KiB is storescu's
  default PDU; 64 KiB a larger one), then finished, header capture on (the
  default 4 MiB cap). The fragments are cut beforehand, as the network hands
  them over already cut;
* ``fast path``: the cost of one ``feed`` that lies wholly inside a skipped
  value.

Usage::

    .venv/bin/python bench/walk.py                 # 512 KiB, Explicit VR LE
    .venv/bin/python bench/walk.py --size 10240    # a 10 KiB instance
    .venv/bin/python bench/walk.py --syntax 1.2.840.10008.1.2  # Implicit VR LE
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.validate import DatasetWalker, walk_dataset  # noqa: E402
from tests.support import dataset_bytes as raw  # noqa: E402
from tests.support import filewalk_reference  # noqa: E402
from tests.support.datasets import dataset_offset, write_instance  # noqa: E402


def per_instance_us(run: object, count: int, rounds: int) -> float:
    """
    Median CPU microseconds of one call of ``run`` over ``rounds`` rounds.

    :param run: a callable of no arguments.
    :param count: calls per round.
    :param rounds: rounds.
    :returns: microseconds per call.
    """
    assert callable(run)
    run()  # warm
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(count):
            run()
        samples.append((time.process_time() - start) / count * 1e6)
    return statistics.median(samples)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=512 * 1024, help="instance size in bytes")
    parser.add_argument("--syntax", default="1.2.840.10008.1.2.1", help="transfer syntax (uncompressed)")
    parser.add_argument("--count", type=int, default=500, help="walks per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the median is printed)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = write_instance(Path(tmp) / "instance.dcm", args.syntax, size=args.size)
        offset = dataset_offset(path)
        data = path.read_bytes()[offset:]

        def file_walk() -> None:
            with open(path, "rb") as fp:
                fp.seek(offset)
                walk_dataset(fp, args.syntax)

        def reference_walk() -> None:
            with open(path, "rb") as fp:
                fp.seek(offset)
                filewalk_reference.walk_dataset(fp, args.syntax)

        def fed(size: int) -> object:
            fragments = [data[at : at + size] for at in range(0, len(data), size)]

            def run() -> None:
                walker = DatasetWalker(args.syntax, start_offset=offset)
                for fragment in fragments:
                    walker.feed(fragment)
                walker.finish()

            return run

        # The results agree before anything is timed.
        with open(path, "rb") as fp:
            fp.seek(offset)
            reference = walk_dataset(fp, args.syntax)
        walker = DatasetWalker(args.syntax, start_offset=offset)
        for at in range(0, len(data), 16384):
            walker.feed(data[at : at + 16384])
        summary = walker.finish()
        assert summary.element_count == reference.element_count
        assert summary.pixel_data_offset == reference.pixel_data_offset
        assert summary.header is not None

        # A walker inside a 4 GB value (Explicit VR LE), header captured.
        inside = DatasetWalker("1.2.840.10008.1.2.1")
        inside.feed(raw.minimal("1.2.3.4") + raw.explicit(0x7FE00010, "OW", length=0xFFFFFFF0))
        fragment = b"\x00" * 1024
        feeds = 100_000

        def fast_path() -> None:
            feed = inside.feed
            for _ in range(feeds):
                feed(fragment)

        print(f"instance: {path.stat().st_size} bytes, data set {len(data)} bytes, "
              f"{summary.element_count} elements, syntax {args.syntax}")
        print(f"file walk before issue 13 (reference):  {per_instance_us(reference_walk, args.count, args.rounds):8.1f} us/instance")
        print(f"file walk now (walk_dataset -> walker): {per_instance_us(file_walk, args.count, args.rounds):8.1f} us/instance")
        for size in (16384, 65536):
            pieces = -(-len(data) // size)
            us = per_instance_us(fed(size), args.count, args.rounds)
            print(f"fed {size // 1024:2d} KiB fragments ({pieces:3d} feeds):     {us:8.1f} us/instance")
        print(f"fast path (a feed inside a skipped value): {per_instance_us(fast_path, 1, args.rounds) / feeds * 1000:6.0f} ns/feed")


if __name__ == "__main__":
    main()
