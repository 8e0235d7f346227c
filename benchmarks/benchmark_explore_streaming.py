"""Throughput and memory of the explore job's output side at SA-1B scale (issue 4, paper section 4).

A shard's finished images live only in its journal (JSON lines); the final COCO file is assembled
by seeking to each image's line in listing order and streaming it out, and ``merge_shards``
streams the shard files into one. This script writes a synthetic journal of ``--images`` images
with ``--masks`` RLE masks each (about 10 KB per mask, like SA-1B's 1500 x 2250 masks), journaled
in *reverse* listing order (the worst case for seeks), then times the assembly and a merge of the
result, and prints the peak resident memory of the process, which must stay far below the file
sizes (an in-memory assembly needs several times the file size).

Usage: ``python benchmarks/benchmark_explore_streaming.py [--images 2000] [--masks 100]``
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from sohes_hf.data.image_sources import ImageEntry
from sohes_hf.masks import encode_masks
from sohes_hf.pseudo_labeling.explore_job import ShardPaths, _assemble, merge_shards
from sohes_hf.pseudo_labeling.explore_journal import Journal


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--masks", type=int, default=100)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rle_pool = encode_masks(rng.random((64, 120, 160)) < 0.5)  # noisy masks: ~10 KB strings
    entries = [
        ImageEntry(image_id=i + 1, file_name=f"sa_{i + 1}.jpg", path=f"/data/sa_{i + 1}.jpg")
        for i in range(args.images)
    ]
    header = {"benchmark": 1}
    with tempfile.TemporaryDirectory() as folder:
        paths = ShardPaths.of(folder, 0, 1)
        offsets: dict[str, int] = {}
        with Journal(paths.journal, header, 50, offsets) as journal:
            for k, entry in enumerate(reversed(entries)):
                annotations = [
                    {
                        "segmentation": rle_pool[(k + j) % len(rle_pool)],
                        "area": 9600,
                        "bbox": [0.0, 0.0, 160.0, 120.0],
                        "score": 1.0,
                        "parent": -1 if j % 4 == 0 else j - 1,
                        "depth": j % 4,
                    }
                    for j in range(args.masks)
                ]
                image = {"id": entry.image_id, "file_name": entry.file_name, "width": 160, "height": 120}
                record = {
                    "type": "image",
                    "key": entry.key,
                    "image": image,
                    "annotations": annotations,
                    "counts": {},
                    "seconds": 0.0,
                }
                journal.append(entry.key, record)
        journal_mb = paths.journal.stat().st_size / 1e6
        rss_before = _peak_rss_mb()
        start = time.perf_counter()
        _assemble(paths, entries, offsets, header, False)
        seconds = time.perf_counter() - start
        output_mb = paths.annotations.stat().st_size / 1e6
        print(
            f"assembly: journal {journal_mb:.0f} MB ({args.images} images x {args.masks} masks) -> "
            f"COCO file {output_mb:.0f} MB in {seconds:.1f} s ({journal_mb / seconds:.0f} MB/s, "
            f"{args.images / seconds:.0f} images/s)"
        )
        start = time.perf_counter()
        merge_shards(folder, Path(folder) / "merged.json")
        seconds = time.perf_counter() - start
        print(f"merge_shards: {output_mb:.0f} MB in {seconds:.1f} s ({output_mb / seconds:.0f} MB/s)")
        print(
            f"peak resident memory: {_peak_rss_mb():.0f} MB (before assembly: {rss_before:.0f} MB; "
            f"largest file {max(journal_mb, output_mb):.0f} MB)"
        )


if __name__ == "__main__":
    main()
