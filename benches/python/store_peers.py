"""squirrel_store from Python beside what a squirrel user would pick instead, in one run.

The seed workload (200 shards x 100 samples of a float32 3x32x32 image, a label and metadata;
random floats, as squirrel's tutorial makes them), one thread unless said otherwise:

* write all shards, read + decode every shard with ``get``, read all through ``get_iter``,
  random shard ``get`` (mean over 200 gets);
* peers: squirrel-core 0.20.2 (``SquirrelStore`` + ``MessagepackDriver``), python-lmdb holding the
  same msgpack-numpy shards uncompressed, and array_record / webdataset when installed.

Run from a virtual environment with ``pip install ./python numpy msgpack msgpack-numpy lmdb
squirrel-core==0.20.2``:  ``python benches/python/store_peers.py [--shards N] [--out FILE.md]``.
Prints a markdown table (seconds, and each peer's time over squirrel_store's default).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

Sample = Dict[str, object]


def make_shards(n_shards: int, per: int, seed: int = 0) -> List[List[Sample]]:
    """The seed workload, deterministic."""
    rng = np.random.default_rng(seed)
    return [
        [
            {
                "image": rng.random((3, 32, 32), dtype=np.float32),
                "label": int(rng.integers(0, 10)),
                "metadata": {"shard": s, "index": i},
            }
            for i in range(per)
        ]
        for s in range(n_shards)
    ]


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def consume(samples) -> int:
    """Touches every sample's image so lazy decoders cannot skip work."""
    n = 0
    for s in samples:
        n += int(s["image"].shape[0])
    return n


def bench_squirrel_store(root: Path, shards, serializer_name: str) -> Dict[str, float]:
    import squirrel_store as ss

    url = str(root / f"ss-{serializer_name}")
    ser = ss.UncompressedSerializer() if serializer_name == "uncompressed" else None
    keys = [f"shard_{i:04d}" for i in range(len(shards))]
    out: Dict[str, float] = {}

    def write() -> None:
        with ss.SquirrelStore(url, serializer=ser, durability="buffered") as st:
            for k, s in zip(keys, shards):
                st.set(s, key=k)
            st.sync()

    out["write"] = timed(write)
    driver = ss.MessagepackDriver(url)
    store = driver.store
    out["get all"] = timed(lambda: [consume(store.get(k)) for k in keys])
    out["get_iter all"] = timed(lambda: consume(driver.get_iter(max_workers=2)))
    rnd = random.Random(1)
    picks = [rnd.choice(keys) for _ in range(200)]
    out["random get"] = timed(lambda: [consume(store.get(k)) for k in picks]) / len(picks)
    return out


def bench_squirrel_core(root: Path, shards) -> Optional[Dict[str, float]]:
    try:
        from squirrel.driver import MessagepackDriver
        from squirrel.serialization import MessagepackSerializer
        from squirrel.store import SquirrelStore
    except ImportError:
        return None
    url = str(root / "squirrel-core")
    keys = [f"shard_{i:04d}" for i in range(len(shards))]
    st = SquirrelStore(url, serializer=MessagepackSerializer())
    out: Dict[str, float] = {}
    out["write"] = timed(lambda: [st.set(s, key=k) for k, s in zip(keys, shards)])
    out["get all"] = timed(lambda: [consume(st.get(k)) for k in keys])
    driver = MessagepackDriver(url)
    out["get_iter all"] = timed(lambda: consume(driver.get_iter(max_workers=2).collect()))
    rnd = random.Random(1)
    picks = [rnd.choice(keys) for _ in range(50)]
    out["random get"] = timed(lambda: [consume(st.get(k)) for k in picks]) / len(picks)
    return out


def bench_lmdb(root: Path, shards) -> Optional[Dict[str, float]]:
    try:
        import lmdb
        import msgpack
        import msgpack_numpy
    except ImportError:
        return None
    path = str(root / "lmdb")
    env = lmdb.open(path, map_size=8 << 30)
    keys = [f"shard_{i:04d}".encode() for i in range(len(shards))]

    def pack(shard) -> bytes:
        return b"".join(
            msgpack.packb(s, use_bin_type=True, default=msgpack_numpy.encode) for s in shard
        )

    def read(txn, k):
        up = msgpack.Unpacker(object_hook=msgpack_numpy.decode, raw=False, max_buffer_size=1 << 31)
        up.feed(txn.get(k))
        return list(up)

    out: Dict[str, float] = {}

    def write() -> None:
        with env.begin(write=True) as txn:
            for k, s in zip(keys, shards):
                txn.put(k, pack(s))
        env.sync()

    out["write"] = timed(write)
    with env.begin() as txn:
        out["get all"] = timed(lambda: [consume(read(txn, k)) for k in keys])
        out["get_iter all"] = out["get all"]
        rnd = random.Random(1)
        picks = [rnd.choice(keys) for _ in range(200)]
        out["random get"] = timed(lambda: [consume(read(txn, k)) for k in picks]) / len(picks)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--per", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    shards = make_shards(args.shards, args.per)
    root = Path(tempfile.mkdtemp(prefix="store-peers-"))
    try:
        rows = {
            "squirrel_store (default)": bench_squirrel_store(root, shards, "default"),
            "squirrel_store (uncompressed)": bench_squirrel_store(root, shards, "uncompressed"),
            "squirrel-core 0.20.2": bench_squirrel_core(root, shards),
            "python-lmdb + msgpack-numpy": bench_lmdb(root, shards),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = rows["squirrel_store (default)"]
    cols = ["write", "get all", "get_iter all", "random get"]
    lines = [
        f"seed workload from Python: {args.shards} shards x {args.per} samples, one run;"
        " cells are seconds (random get: ms) and the time over squirrel_store (default)",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, r in rows.items():
        if r is None:
            lines.append(f"| {name} | " + " | ".join("not installed" for _ in cols) + " |")
            continue
        cells = []
        for c in cols:
            v = r[c] * (1000 if c == "random get" else 1)
            unit = " ms" if c == "random get" else " s"
            cells.append(f"{v:.3f}{unit} ({r[c] / base[c]:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
