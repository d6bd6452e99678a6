#!/usr/bin/env python3
"""End-to-end seed workload with Python squirrel-core (the reference squirrel-store is compared with).

Writes 200 shards x 100 samples {image: float32 3x32x32, label, metadata} with
SquirrelStore + MessagepackSerializer into a temporary directory, reads and decodes every shard
in parallel, then times random single-shard gets. Prints one JSON object on stdout, the input of
`squirrel-bench --python-json FILE`.

Install: pip install squirrel-core==0.20.2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import squirrel
from squirrel.serialization import MessagepackSerializer
from squirrel.store import SquirrelStore

SEED = 0x5EED5EED


def make_images(rng: np.random.Generator, samples: int, kind: str) -> np.ndarray:
    """float32: uniform random (the seed's data, does not compress). uint8: an object (a rectangle
    of 8 to 16 pixels a side holding a gradient, (4x + 4y + 64c + 1 bit of noise) mod 256) on a
    flat background of a random value, as the Rust side makes (compresses)."""
    if kind == "float32":
        return rng.random((samples, 3, 32, 32), dtype=np.float32)
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    out = np.empty((samples, 3, 32, 32), dtype=np.uint8)
    for i in range(samples):
        background = rng.integers(0, 256)
        x0, y0 = rng.integers(0, 16, size=2)
        w, h = rng.integers(8, 17, size=2)
        inside = (x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)
        noise = rng.integers(0, 2, size=(3, 32, 32))
        out[i] = np.where(inside, (4 * x + 4 * y + 64 * c + noise) % 256, background).astype(np.uint8)
    return out


def make_shards(shards: int, samples: int, kind: str = "float32") -> list[list[dict]]:
    """The seed shards: random floats, so nothing compresses trivially (or structured uint8)."""
    rng = np.random.default_rng(SEED)
    out = []
    for s in range(shards):
        images = make_images(rng, samples, kind)
        labels = rng.integers(0, 10, size=samples)
        out.append(
            [
                {
                    "image": images[i],
                    "label": int(labels[i]),
                    "metadata": {"id": f"shard{s:04d}-sample{i:03d}", "source": "synthetic", "split": "train"},
                }
                for i in range(samples)
            ]
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--gets", type=int, default=100, help="random single-shard gets to time")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tmp", default=None, help="parent of the temporary store directory")
    parser.add_argument("--images", choices=["float32", "uint8"], default="float32")
    args = parser.parse_args()

    shards = make_shards(args.shards, args.samples, args.images)
    raw = sum(sample["image"].nbytes for shard in shards for sample in shard)
    keys = [f"shard_{i:05d}" for i in range(args.shards)]
    tmp = tempfile.mkdtemp(prefix="squirrel-seed-", dir=args.tmp)
    try:
        store = SquirrelStore(url=tmp, serializer=MessagepackSerializer())

        # Write: serialize + gzip + one file per shard (squirrel does not fsync).
        t = time.perf_counter()
        for key, shard in zip(keys, shards):
            store.set(shard, key=key)
        write_s = time.perf_counter() - t

        def read(key: str) -> int:
            n = 0
            for sample in store.get(key):
                n += sample["image"].nbytes
            return n

        # Read + decode every shard, in parallel (threads: gzip and msgpack release the GIL).
        read(keys[0])  # warm the imports and the page cache path
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            got = sum(pool.map(read, sorted(store.keys())))
        read_s = time.perf_counter() - t
        if got != raw:
            raise SystemExit(f"read back {got} image bytes, wrote {raw}")

        # Random single-shard get + decode.
        rnd = random.Random(SEED)
        picks = [rnd.choice(keys) for _ in range(args.gets)]
        t = time.perf_counter()
        for key in picks:
            read(key)
        get_s = time.perf_counter() - t

        size_on_disk = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    json.dump(
        {
            "version": getattr(squirrel, "__version__", "unknown"),
            "python": sys.version.split()[0],
            "images": args.images,
            "shards": args.shards,
            "samples_per_shard": args.samples,
            "workers": args.workers,
            "raw_image_bytes": raw,
            "size_on_disk": size_on_disk,
            "write_mbps": raw / 1e6 / write_s,
            "read_decode_mbps": raw / 1e6 / read_s,
            "get_shard_ms": get_s * 1e3 / args.gets,
        },
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
