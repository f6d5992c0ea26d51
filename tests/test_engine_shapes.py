"""The engine on generated data of other shapes: codes, magnitudes, signs, gaps, no overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from oracle import assert_matches, expected, join

from ppa_kernel import Consortium, ConsortiumError


def make_shapes(seed: int = 5, n: int = 240) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    keys = np.array([f"K{i:05d}" for i in range(3 * n)])
    a_keys = keys[: 2 * n]
    b_keys = np.concatenate([keys[: n], keys[2 * n:]])
    c_keys = keys[n // 2: 2 * n]
    a = pd.DataFrame({"pseudonym": a_keys,
                      "code": rng.integers(1, 4, len(a_keys)),
                      "big": rng.normal(80_000, 25_000, len(a_keys)).round(2),
                      "flag": rng.integers(0, 2, len(a_keys)).astype(float)})
    b = pd.DataFrame({"pseudonym": b_keys,
                      "delta": rng.normal(-3, 2, len(b_keys)),
                      "kind": rng.choice(["x", "y", None], len(b_keys), p=[0.5, 0.4, 0.1])})
    c = pd.DataFrame({"pseudonym": c_keys,
                      "score": rng.integers(-50, 50, len(c_keys)).astype(float),
                      "tiny": rng.uniform(0, 0.01, len(c_keys))})
    a.loc[rng.random(len(a)) < 0.05, "big"] = np.nan
    return {"a": a, "b": b, "c": c}


@pytest.fixture(scope="module")
def shapes():
    return make_shapes()


@pytest.fixture(scope="module")
def shaped(shapes, tmp_path_factory):
    with Consortium.local(shapes, link="pseudonym", categorical={"a": ["code"]},
                          workdir=tmp_path_factory.mktemp("shapes")) as c:
        yield c


def test_codes_magnitudes_signs_and_gaps(shaped, shapes):
    t = shaped.link()
    t = t.assign(mix=t.big * t.flag + t.delta * 1000 - t.score, small=t.tiny + t.flag)
    got = (t[t.delta < t.score / 10]
           .groupby(["code", "kind"])
           .agg(n=("mix", "count"), mean=("mix", "mean"), sd=("mix", "std"),
                s=("small", "mean"))
           .collect())
    p = join(shapes, ["a", "b", "c"])
    mix = lambda r: r.big * r.flag + r.delta * 1000 - r.score  # noqa: E731
    small = lambda r: r.tiny + r.flag  # noqa: E731
    want, mask = expected(p[p.delta < p.score / 10], ["code", "kind"], [[1, 2, 3], ["x", "y"]],
                          {"n": (mix, "count"), "mean": (mix, "mean"), "sd": (mix, "std"),
                           "s": (small, "mean")})
    assert_matches(got, want, mask)
    assert (~mask.to_numpy()).any()


def test_link_of_two_parties_with_negative_values(shaped, shapes):
    t = shaped.link("b", "c")
    got = t.agg(n=("score", "count"), mean=("score", "mean"), var=("delta", "var")).collect()
    want, mask = expected(join(shapes, ["b", "c"]), [], [],
                          {"n": ("score", "count"), "mean": ("score", "mean"),
                           "var": ("delta", "var")})
    assert_matches(got, want, mask)


def test_party_without_overlap_gives_empty_result(tmp_path):
    data = make_shapes(seed=9, n=60)
    data["c"] = data["c"].assign(pseudonym=[f"Z{i}" for i in range(len(data["c"]))])
    with Consortium.local(data, link="pseudonym", workdir=tmp_path) as c:
        got = c.link().agg(n=("score", "count"), mean=("big", "mean")).collect()
        multiplicity = got.attrs["multiplicity"]
    assert got.isna().all().all()
    assert got.attrs["suppressed"].all().all()
    assert "3" not in multiplicity and 3 not in multiplicity


def test_duplicate_link_keys_are_rejected_naming_the_party(tmp_path):
    data = make_shapes(seed=2, n=40)
    data["b"] = pd.concat([data["b"], data["b"].iloc[:3]], ignore_index=True)
    with pytest.raises(ConsortiumError) as info:
        Consortium.local(data, link="pseudonym", workdir=tmp_path)
    text = str(info.value)
    assert "[b]" in text and "duplicate" in text
