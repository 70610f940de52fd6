"""How long `soundnet extract` takes to find its inputs and name their outputs.

Creates N empty .wav files (1,000 per folder) under a scratch folder, then times the file walk
and the whole discovery (walk, symlink grouping, output stems). Discovery runs before any work,
on every resume and on every rank, so it must stay linear in the number of paths.

    python benchmarks/discovery.py                  # 1,000,000 files (about 1 GB of inodes)
    python benchmarks/discovery.py --files 100000 --keep /tmp/tree
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from soundnet_cli.extraction.inputs import discover
from soundnet_cli.media.files import walk


def make_tree(root: Path, files: int, per_folder: int = 1000) -> None:
    for start in range(0, files, per_folder):
        folder = root / f"d{start // per_folder:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(start + per_folder, files)):
            os.close(os.open(folder / f"clip{i:07d}.wav", os.O_CREAT | os.O_WRONLY, 0o644))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the tree here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="soundnet-discovery-"))
    try:
        if not any(root.glob("d*")):
            started = time.perf_counter()
            make_tree(root, args.files)
            print(f"created {args.files:,} files in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        found = walk([root])
        walked = time.perf_counter() - started
        started = time.perf_counter()
        sources = discover([root])
        discovered = time.perf_counter() - started
        assert len(found) == len(sources)
        print(f"walk: {len(found):,} paths in {walked:.1f} s")
        print(f"discover (walk + grouping + stems): {len(sources):,} inputs in {discovered:.1f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
