"""Linked-table columns kept per data epoch (``party/secure/replay_cache.py``).

A later query on the same epoch takes the columns every party holds under one agreed
token instead of replaying them; results stay equal to pandas on the plaintext join,
and any lost, altered or unreadable entry at any party makes every party replay it.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from oracle import assert_matches, expected, join

from ppa_kernel.contract.program import Feature, Program
from ppa_kernel.party.secure.limbs import VALUE
from ppa_kernel.party.secure.replay_cache import (
    ColumnCache,
    column_identity,
    content_digest,
)

PARTIES = ["insurer", "hospital", "bureau"]
LINKING = {"linkage.epoch", "linkage.party_sizes", "linkage.prf_masked",
           "linkage.equality_masked"}
"""What only a run that links opens (the first one in a fresh epoch)."""


def _shares(people: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    limbs = rng.integers(0, 1 << 26, size=(VALUE.limbs, people), dtype=np.uint32)
    limbs[-1] &= (1 << VALUE.top_bits) - 1  # canonical: below 2^256 (and p, but for 2^-200)
    return limbs


def _limbs_of(value: int) -> np.ndarray:
    return np.array([(value >> (26 * i)) & ((1 << 26) - 1) for i in range(VALUE.limbs)],
                    dtype=np.uint32)


def test_a_stored_column_comes_back_under_its_token(tmp_path):
    cache = ColumnCache(tmp_path)
    shares = _shares(50)
    cache.store("col-a", "digest", token=12345, shares=shares)
    again = ColumnCache(tmp_path)
    assert again.token("col-a", "digest") == 12345
    np.testing.assert_array_equal(again.shares("col-a"), shares)
    assert again.token("col-b") == 0  # never stored
    assert again.token("col-a", "other content") == 0  # the owner's data gives another column
    assert stat.S_IMODE(cache.folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in cache.folder.iterdir())


@pytest.mark.parametrize("damage", ["shape", "dtype", "pickle", "token", "identity", "json",
                                    "limb", "value"])
def test_a_damaged_entry_is_reported_as_absent(tmp_path, damage):
    cache = ColumnCache(tmp_path)
    cache.store("col", None, token=7, shares=_shares(20))
    meta_path, data_path = cache._paths("col")
    meta = json.loads(meta_path.read_text())
    if damage == "shape":
        np.save(data_path, _shares(19))
    elif damage == "dtype":
        np.save(data_path, _shares(20).astype(np.uint64))
    elif damage == "pickle":
        np.save(data_path, np.array([object()] * 20, dtype=object), allow_pickle=True)
    elif damage in ("limb", "value"):  # not canonical: the limb arithmetic would overflow
        limbs = _shares(20)
        if damage == "limb":
            limbs[3, 5] = 1 << 31
        else:  # p + 1: every limb in range, the value not
            limbs[:, 5] = _limbs_of(VALUE.modulus + 1)
        np.save(data_path, limbs)
    elif damage == "token":
        meta["token"] = 1 << 70
    elif damage == "identity":
        meta["identity"] = "another column"
    else:
        meta_path.write_text("{not json")
    if damage in ("token", "identity"):
        meta_path.write_text(json.dumps(meta))
    assert ColumnCache(tmp_path).token("col") == 0


def test_the_least_recently_used_columns_go_beyond_capacity(tmp_path):
    column = _shares(100)
    size = len(column.tobytes()) + 128  # the .npy header
    cache = ColumnCache(tmp_path, capacity=3 * size)
    for i in range(3):
        cache.store(f"col-{i}", None, token=i + 1, shares=column)
    old = cache._paths("col-1")[0].stat().st_mtime - 100
    for i in range(3):  # col-0 used most recently, col-2 least
        os.utime(cache._paths(f"col-{i}")[0], (old + (2 - i) * 10,) * 2)
    cache.store("col-3", None, token=4, shares=column)
    kept = {f"col-{i}" for i in range(4) if ColumnCache(tmp_path).token(f"col-{i}")}
    assert kept == {"col-0", "col-1", "col-3"}


def test_identities_tell_columns_apart():
    program = Program(plan={}, group_entries={"bureau": [{"name": "income", "bins": [0, 1, 2]}]})
    features = [Feature("insurer", "val", '{"col":"insurer.age"}'),
                Feature("insurer", "nn", '{"col":"insurer.age"}'),
                Feature("hospital", "val", '{"col":"insurer.age"}'),
                Feature("bureau", "onehot", '["income"]', 0),
                Feature("bureau", "onehot", '["income"]', 1)]
    names = {column_identity(program, f, joined) for f in features for joined in (2, 3)}
    assert len(names) == 2 * len(features)
    rebinned = Program(plan={}, group_entries={"bureau": [{"name": "income", "bins": [0, 2]}]})
    assert column_identity(rebinned, features[3], 3) != column_identity(program, features[3], 3)


def test_content_digests_follow_the_values():
    a = np.array([1, 2, 3], dtype=object)
    assert content_digest(a) == content_digest(a.copy())
    assert content_digest(a) != content_digest(np.array([1, 2, 4], dtype=object))
    big = np.array([1 << 80, 2], dtype=object)
    assert content_digest(big) != content_digest(np.array([1 << 81, 2], dtype=object))


def _columns_folder(consortium, party):
    return consortium.local_parties.folder / "state" / party / "epoch" / "columns"


def _study(t):
    t = t.assign(spend=t.cost_2021 * 3 - t.cost_2020)  # columns only this file replays
    return t.groupby("app_user").agg(n=("spend", "count"), mean=("spend", "mean"),
                                     sd=("spend", "std"))


def _oracle(demo_data):
    plain = join(demo_data, PARTIES)
    spend = lambda r: r.cost_2021 * 3 - r.cost_2020  # noqa: E731
    return expected(plain, ["app_user"], [[False, True]],
                    {"n": (spend, "count"), "mean": (spend, "mean"), "sd": (spend, "std")})


def _counts(outcome):
    seen = [(r["input_widths"], r["reused_widths"]) for r in outcome.results.values()]
    assert all(s == seen[0] for s in seen), "parties disagree on what they replayed"
    return seen[0]


def test_a_repeat_query_reuses_every_column_and_matches_pandas(consortium, demo_data):
    plan = _study(consortium.link()).plan()
    first = consortium.run_raw(plan)
    replayed, _ = _counts(first)
    assert sum(replayed.values()) > 0
    table = _study(consortium.link()).collect()
    assert_matches(table, *_oracle(demo_data))
    again = consortium.run_raw(plan)
    inputs, reused = _counts(again)
    assert sum(inputs.values()) == 0
    assert sum(reused.values()) == sum(replayed.values()) + sum(_counts(first)[1].values())
    names = lambda o: {e["name"] for e in o.results["insurer"]["openings"]}  # noqa: E731
    assert names(again) == names(first) - LINKING, "reusing columns changed what was opened"


@pytest.mark.parametrize("how", ["lost", "altered", "truncated"])
def test_a_damaged_cache_at_one_party_makes_all_replay(consortium, demo_data, how):
    t = consortium.link()
    consortium.run_raw(_study(t).plan())  # every column stored at every party
    folder = _columns_folder(consortium, "hospital")
    metas = sorted(folder.glob("*.json"))
    assert metas, "the hospital stored no columns"
    for meta_path in metas:
        if how == "lost":
            meta_path.unlink()
            meta_path.with_suffix(".npy").unlink()
        elif how == "altered":  # a token from no run the others took part in
            meta = json.loads(meta_path.read_text())
            meta["token"] = meta["token"] % ((1 << 60) - 1) + 1
            meta_path.write_text(json.dumps(meta))
        else:
            data = meta_path.with_suffix(".npy")
            data.write_bytes(data.read_bytes()[:100])
    outcome = consortium.run_raw(_study(t).plan())
    inputs, reused = _counts(outcome)
    assert sum(inputs.values()) > 0 and sum(reused.values()) == 0
    assert_matches(_study(consortium.link()).collect(), *_oracle(demo_data))
    assert sum(_counts(consortium.run_raw(_study(t).plan()))[0].values()) == 0, \
        "the replay did not restore the cache"


def test_a_party_that_keeps_no_columns_makes_every_query_replay(demo_data, tmp_path):
    """``replay_cache_gb = 0`` in the hospital's party file: it stores no column, so it
    reports no token, and every repeat query replays at all parties (and still matches
    pandas) though the others keep theirs."""
    from conftest import NO_DIFFERENCING

    from ppa_kernel import Consortium

    with Consortium.local(demo_data, link="pseudonym", workdir=tmp_path,
                          policies={p: NO_DIFFERENCING for p in demo_data},
                          party_options={"hospital": {"replay_cache_gb": 0}}) as c:
        t = c.link()
        first = c.run_raw(_study(t).plan())
        again = c.run_raw(_study(t).plan())
        assert _counts(again)[0] == _counts(first)[0] and sum(_counts(again)[1].values()) == 0
        assert_matches(_study(c.link()).collect(), *_oracle(demo_data))
        assert not list(_columns_folder(c, "hospital").glob("*.npy"))
        assert list(_columns_folder(c, "insurer").glob("*.npy"))


@pytest.mark.parametrize("value", [-1, "4", True, 5000, float("nan")])
def test_the_replay_cache_size_is_bounded(tmp_path, value):
    from ppa_kernel.analyst.local import write_local_config
    from ppa_kernel.contract.config import ConfigError, load_party

    write_local_config(tmp_path, {"insurer": None, "bureau": None, "hospital": None}, "pseudonym",
                       party_options={"replay_cache_gb": value})
    with pytest.raises(ConfigError, match="replay_cache_gb must be a number of GiB"):
        load_party(tmp_path / "insurer.toml")


def test_the_replay_cache_size_reaches_the_worker(tmp_path):
    from ppa_kernel.analyst.local import write_local_config
    from ppa_kernel.contract.config import load_party

    write_local_config(tmp_path, {"insurer": None, "bureau": None, "hospital": None}, "pseudonym",
                       party_options={"insurer": {"replay_cache_gb": 0.5}})
    assert load_party(tmp_path / "insurer.toml").replay_cache_bytes == 1 << 29
    assert load_party(tmp_path / "bureau.toml").replay_cache_bytes == 4 << 30
