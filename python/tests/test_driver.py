"""MessagepackDriver and get_iter: order, shuffles, workers, squirrel integration."""

from __future__ import annotations

import pytest

from squirrel_store import MessagepackDriver, SquirrelStore


@pytest.fixture
def url(tmp_path):
    with SquirrelStore(tmp_path / "s", durability="buffered") as store:
        for i in range(12):
            store.set([{"shard": i, "item": j} for j in range(5)], key=f"shard_{i:02d}")
    return str(tmp_path / "s")


def ids(samples):
    return [(s["shard"], s["item"]) for s in samples]


ALL = [(i, j) for i in range(12) for j in range(5)]


def test_driver_basics(url):
    driver = MessagepackDriver(url)
    assert list(driver.keys()) == [f"shard_{i:02d}" for i in range(12)]
    assert [s["item"] for s in driver.get("shard_03")] == list(range(5))
    assert driver.store.read_only
    with pytest.raises(Exception):
        driver.store.set([1])


@pytest.mark.parametrize("workers", [None, 0, 1, 3])
def test_get_iter_in_key_order(url, workers):
    assert ids(MessagepackDriver(url).get_iter(max_workers=workers)) == ALL


def test_get_iter_keys_and_flatten(url):
    driver = MessagepackDriver(url)
    assert ids(driver.get_iter(keys_iterable=["shard_05", "shard_01"])) == [(5, j) for j in range(5)] + [
        (1, j) for j in range(5)
    ]
    shards = list(driver.get_iter(keys_iterable=["shard_02", "shard_07"], flatten=False))
    assert [ids(s) for s in shards] == [[(2, j) for j in range(5)], [(7, j) for j in range(5)]]


def test_get_iter_missing_key_raises(url):
    with pytest.raises(KeyError):
        list(MessagepackDriver(url).get_iter(keys_iterable=["nope"]))


def test_shuffles_are_seeded_permutations(url):
    driver = MessagepackDriver(url)
    a = ids(driver.get_iter(shuffle_key_buffer=100, shuffle_item_buffer=17, seed=3))
    b = ids(driver.get_iter(shuffle_key_buffer=100, shuffle_item_buffer=17, seed=3))
    c = ids(driver.get_iter(shuffle_key_buffer=100, shuffle_item_buffer=17, seed=4))
    assert a == b and a != c and a != ALL
    assert sorted(a) == ALL and sorted(c) == ALL
    keys_only = ids(driver.get_iter(shuffle_key_buffer=100, seed=1))
    shard_order = [s for s, _ in keys_only[::5]]
    assert sorted(shard_order) == list(range(12)) and shard_order != list(range(12))
    assert keys_only == [(s, j) for s in shard_order for j in range(5)]


def test_squirrel_composable(url):
    pytest.importorskip("squirrel")
    from squirrel.iterstream import Composable

    it = MessagepackDriver(url).get_iter()
    assert isinstance(it, Composable)
    batches = it.map(lambda s: s["item"]).batched(5, drop_last_if_not_full=False).collect()
    assert batches[0] == [0, 1, 2, 3, 4] and len(batches) == 12


def test_plugin_entry_point():
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group="squirrel") if hasattr(eps, "select") else eps.get("squirrel", [])
    names = {ep.name: ep.value for ep in group}
    assert names.get("squirrel_store") == "squirrel_store._squirrel_plugin"


def test_plugin_registers_driver(url):
    pytest.importorskip("squirrel")
    from squirrel.framework.plugins.plugin_manager import list_driver_names

    assert "squirrel_store" in list_driver_names()
