"""Transfer-syntax conversion cost and memory (issue 17): RSS and CPU per instance and per frame.

Generates one native multi-frame instance (default 400 frames of 512 x 512
16-bit, 200 MiB of pixel data), makes it in each compressed syntax, then
times every conversion to each target in a child process of its own, and
prints per row: the child's peak RSS (``ru_maxrss``) above the same child's
RSS before converting (the imports), the CPU time (user + system) per
instance and per frame, and the sizes. The peak above baseline is the
conversion's memory; frame by frame it stays near a few frames whatever the
frame count (``--frames`` doubles it to check).

Usage::

    .venv/bin/python bench/transcode.py [--frames 400] [--size 512] [--targets rle,jpeg2000-lossless]

Everything is written in a temporary folder that is removed at the end.
Figures only: nothing here is an assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The child: convert one file, print RSS/CPU figures as JSON.
_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[4])
from gateway.codecs import TransferSyntaxPolicy
from gateway.codecs.convert import convert_for
import numpy, pydicom.pixels  # imported before the baseline
def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
before = rss_kib()
usage0 = resource.getrusage(resource.RUSAGE_SELF)
wall0 = time.monotonic()
result = convert_for(TransferSyntaxPolicy(sys.argv[1], lossy=True), sys.argv[2], sys.argv[3])
wall = time.monotonic() - wall0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "baseline_kib": before,
    "peak_kib": usage.ru_maxrss,
    "cpu_s": (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime),
    "wall_s": wall,
    "out": result.path,
    "out_bytes": os.path.getsize(result.path),
}))
"""


def make_source(path: str, frames: int, size: int) -> int:
    """A native Explicit VR LE multi-frame instance of smooth 12-bit data, written frame by frame."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from gateway.codecs.write import write_part10

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = frames
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size]

    def frame_bytes():
        for i in range(frames):
            image = (2048 + 1500 * np.sin((xx + 3 * i) / 40.0) * np.cos(yy / 55.0)).astype("<u2")
            image += rng.integers(0, 16, size=image.shape, dtype=np.uint16)
            yield (image & 0x0FFF).tobytes()

    with open(path, "wb") as stream:
        write_part10(stream, ds, meta, frame_bytes(), encapsulated=False, native_length=frames * size * size * 2)
    return frames * size * size * 2


def run_child(target: str, src: str, scratch: str) -> dict:
    """Convert in a fresh child; its JSON figures."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, target, src, scratch, ROOT], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--targets", default="uncompressed,rle,jpeg-ls-lossless,jpeg2000-lossless")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    targets = args.targets.split(",")
    tmp = tempfile.mkdtemp(prefix="bench-transcode-")
    try:
        native = os.path.join(tmp, "native.dcm")
        pixel_bytes = make_source(native, args.frames, args.size)
        frame_kib = args.size * args.size * 2 / 1024
        print(f"source: {args.frames} frames of {args.size}x{args.size} 16-bit, {pixel_bytes / 2**20:.0f} MiB of pixels,"
              f" one frame {frame_kib:.0f} KiB")
        sources = {"uncompressed": native}
        for target in targets:
            if target == "uncompressed":
                continue
            made = run_child(target, native, tmp)
            if "error" in made:
                print(f"cannot make a {target} source: {made['error']}")
                continue
            sources[target] = made["out"]
        print(f"{'from':<18} {'to':<18} {'peak-base MiB':>13} {'frames':>7} {'CPU s':>7} {'ms/frame':>9} {'wall s':>7}"
              f" {'out MiB':>8}")
        for source_name, src in sources.items():
            for target in targets:
                if target == source_name:
                    continue
                figures = run_child(target, src, tmp)
                if "error" in figures:
                    print(f"{source_name:<18} {target:<18} error: {figures['error']}")
                    continue
                above = (figures["peak_kib"] - figures["baseline_kib"]) / 1024
                print(
                    f"{source_name:<18} {target:<18} {above:>13.1f} {above * 1024 / frame_kib:>7.1f}"
                    f" {figures['cpu_s']:>7.2f} {figures['cpu_s'] * 1000 / args.frames:>9.2f} {figures['wall_s']:>7.2f}"
                    f" {figures['out_bytes'] / 2**20:>8.1f}"
                )
                os.unlink(figures["out"])
        print("peak-base: the child's peak RSS above its RSS after the imports; frames: that, in frames' worth.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
