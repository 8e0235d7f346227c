"""torchrun worker: each rank checks image headers across processes and writes what it probed.

Usage: ``torchrun --nproc_per_node 2 _probe_worker.py OUT_DIR INPUT...`` (test_image_probe.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from sohes_hf.data.image_probe import probe_images
from sohes_hf.data.image_sources import ImageEntry, ImageReader, list_images


def main() -> None:
    out_dir, inputs = Path(sys.argv[1]), sys.argv[2:]
    dist.init_process_group("gloo")
    probed: list[str] = []
    probe = ImageReader.probe

    def recording_probe(reader: ImageReader, entry: ImageEntry) -> tuple[int, int]:
        probed.append(entry.key)
        return probe(reader, entry)

    ImageReader.probe = recording_probe  # type: ignore[method-assign]
    results = probe_images(list_images(inputs), num_threads=2, across_processes=True)
    payload = {"results": [list(r) if isinstance(r, tuple) else r for r in results], "probed": probed}
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(payload))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
