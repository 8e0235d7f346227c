"""Cost of the load-time header check of training images (``ImageReader.probe``) vs decoding.

Every training image's header is opened once when a training run starts (datasets.py), so a
zero-byte or non-image file is left out before the first step. This prints that check's time
per image for plain JPEG files and for the members of an SA-1B-format tar pack (files warm in
the page cache; a cold or network file system adds one small read per image), next to a full
decode (``ImageReader.read``) of the same images, and the time of the whole check as the dataset
runs it (``probe_images``: tasks of one pack or 256 files, ``--threads`` threads).

Usage:
    python benchmarks/benchmark_image_probe.py [--num-images 200] [--width 2250] [--height 1500]
        [--threads 1,2,8] [--packs 1] [--cold]

``--packs N`` splits the images over N tar packs (tasks of probe_images); ``--cold`` drops the
page cache before each probe_images run (needs root: writes /proc/sys/vm/drop_caches).
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sohes_hf.data.image_probe import probe_images
from sohes_hf.data.image_sources import ImageReader, list_images


def _time_per_image(function, entries) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for entry in entries:
        function(entry)
    return (time.perf_counter() - start) / len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--width", type=int, default=2250)  # SA-1B images are ~1500 x 2250
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--threads", default="1,2,8", help="comma-separated thread counts for probe_images")
    parser.add_argument("--packs", type=int, default=1, help="tar packs the images are split over")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each run (root)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        base = rng.integers(0, 255, (args.height // 8, args.width // 8, 3), dtype=np.uint8)
        picture = Image.fromarray(base).resize((args.width, args.height))  # smooth: JPEG-like sizes
        for number in range(1, args.num_images + 1):
            picture.save(folder / f"sa_{number}.jpg", quality=90)
        names = sorted(folder.iterdir())
        packs = [Path(tmp) / f"sa_{number:06d}.tar" for number in range(args.packs)]
        for number, pack in enumerate(packs):
            with tarfile.open(pack, "w") as tar:
                for path in names[number :: args.packs]:
                    tar.add(path, arcname=path.name)
        size = (folder / "sa_1.jpg").stat().st_size
        print(f"{args.num_images} JPEGs of {args.width}x{args.height} ({size / 1e6:.2f} MB each)")
        for kind, sources in (("files", [folder]), ("tar members", packs)):
            entries = list_images(sources)
            with ImageReader() as reader:
                reader.probe(entries[0])  # opens the pack once
                probe = _time_per_image(reader.probe, entries)
                read = _time_per_image(reader.read, entries)
            sa1b_minutes = probe * 11e6 / 60
            print(
                f"{kind:12s} header check {probe * 1e6:8.1f} us/image, decode {read * 1e3:7.2f} ms/image "
                f"({read / probe:.0f}x); 11M images (SA-1B): {sa1b_minutes:.1f} min of checks"
            )
            for threads in (int(t) for t in args.threads.split(",")):
                if args.cold:
                    os.sync()
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                probe_images(entries, num_threads=threads)
                wall = (time.perf_counter() - start_wall) / len(entries)
                cpu = (time.process_time() - start_cpu) / len(entries)
                print(
                    f"    probe_images{' (cold)' if args.cold else ''}, {threads} thread(s), "
                    f"{len(sources)} source(s), pack indexing included: {wall * 1e6:8.1f} us/image wall, "
                    f"{cpu * 1e6:8.1f} us/image CPU"
                )


if __name__ == "__main__":
    main()
