"""Benchmark the data set structure walk: the file walk against the walk fed as the bytes arrive.

Prints CPU microseconds per instance (``time.process_time``, the median of
``--rounds`` interleaved rounds of ``--count`` walks each) for one instance of
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
* with ``--deflated``, the same data set deflated (PS3.5 A.5): the file walk
  before issue 13 from memory, and the walker fed 16 KiB of compressed bytes
  at a time (both inflate everything);
* ``fast path``: the cost of one ``feed`` that lies wholly inside a skipped
  value.

Usage::

    .venv/bin/python bench/walk.py                 # 512 KiB, Explicit VR LE
    .venv/bin/python bench/walk.py --size 10240    # a 10 KiB instance
    .venv/bin/python bench/walk.py --syntax 1.2.840.10008.1.2  # Implicit VR LE
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.validate import DatasetWalker, walk_dataset  # noqa: E402
from tests.support import dataset_bytes as raw  # noqa: E402
from tests.support import filewalk_reference  # noqa: E402
from tests.support.datasets import dataset_offset, write_instance  # noqa: E402


def interleaved_us(runs: dict[str, Callable[[], None]], count: int, rounds: int) -> dict[str, float]:
    """
    Median CPU microseconds of one call of each run, the runs interleaved.

    Each round times every run in turn (``count`` calls each), so a busy
    neighbour on a shared machine weighs on all of them alike.

    :param runs: callables of no arguments, by label.
    :param count: calls per run per round.
    :param rounds: rounds.
    :returns: microseconds per call, by label.
    """
    samples: dict[str, list[float]] = {label: [] for label in runs}
    for run in runs.values():
        run()  # warm
    for _ in range(rounds):
        for label, run in runs.items():
            start = time.process_time()
            for _ in range(count):
                run()
            samples[label].append((time.process_time() - start) / count * 1e6)
    return {label: statistics.median(values) for label, values in samples.items()}


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=512 * 1024, help="instance size in bytes")
    parser.add_argument("--syntax", default="1.2.840.10008.1.2.1", help="transfer syntax (uncompressed)")
    parser.add_argument("--deflated", action="store_true",
                        help="also walk the data set deflated (PS3.5 A.5, zlib level 6): file walk and 16 KiB feeds")
    parser.add_argument("--count", type=int, default=500, help="walks per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (the median is printed)")
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

        def fed(size: int) -> Callable[[], None]:
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

        runs: dict[str, Callable[[], None]] = {
            "file walk before issue 13 (reference)": reference_walk,
            "file walk now (walk_dataset -> walker)": file_walk,
        }
        for size in (16384, 65536):
            pieces = -(-len(data) // size)
            runs[f"fed {size // 1024} KiB fragments ({pieces} feeds)"] = fed(size)
        if args.deflated:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            packed = compressor.compress(data) + compressor.flush()
            deflated_ts = "1.2.840.10008.1.2.1.99"

            def reference_deflated() -> None:
                filewalk_reference.walk_dataset(io.BytesIO(packed), deflated_ts)  # type: ignore[arg-type]

            def fed_deflated() -> None:
                walker = DatasetWalker(deflated_ts)
                for at in range(0, len(packed), 16384):
                    walker.feed(packed[at : at + 16384])
                walker.finish()

            runs[f"deflated ({len(packed)} B): file walk before issue 13"] = reference_deflated
            runs["deflated: fed 16 KiB fragments"] = fed_deflated
        figures = interleaved_us(runs, args.count, args.rounds)
        print(f"instance: {path.stat().st_size} bytes, data set {len(data)} bytes, "
              f"{summary.element_count} elements, syntax {args.syntax}; "
              f"CPU us per instance, median of {args.rounds} interleaved rounds of {args.count}")
        for label, us in figures.items():
            print(f"  {label:42s} {us:8.1f} us/instance")
        fast = interleaved_us({"fast": fast_path}, 1, args.rounds)["fast"]
        print(f"  {'fast path (a feed inside a skipped value)':42s} {fast / feeds * 1000:8.0f} ns/feed")


if __name__ == "__main__":
    main()
