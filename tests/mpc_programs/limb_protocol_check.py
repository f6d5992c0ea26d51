"""Run under MPyC's local launcher (``python limb_protocol_check.py -M3 -B PORT``).

Checks the limb-array protocols against MPyC's own object-array path on the same shares
and against a plaintext oracle of the opened values; party 0 prints one JSON line.
Not collected by pytest: tests/test_limb_protocols.py starts it.
"""

from __future__ import annotations

import os
import secrets

import gmpy2
import numpy as np
from check_report import finish

from ppa_kernel.party.secure import limb_shares, limbs, prf
from ppa_kernel.party.secure.limbs import LINK
from ppa_kernel.party.secure.linkage import hash_keys, link, linked_table
from ppa_kernel.party.secure.openings import reveal_limbs
from ppa_kernel.party.secure.runtime import (
    link_type,
    mpc,
    random_field_array,
    shares,
    value_type,
    zero_sharing,
)

ROWS, BITS, CHUNK = 150, 5, 64  # three batches, the last one partial


async def object_path_tags(sectype, x_share, k_share, bits):
    """The tags as the object-array path computed them before the limb arrays."""
    field, p = sectype.field, sectype.field.modulus
    shifted = (x_share[:, None] + k_share[None, :]).reshape(-1)
    r = random_field_array(sectype, len(shifted))
    squares = await shares(r * r)
    masked = field.array((shifted * squares) % p + zero_sharing(field, len(shifted)).value)
    opened = await mpc.output(masked, threshold=2 * mpc.threshold)
    symbols = np.array([gmpy2.legendre(int(v), p) for v in opened.value]).reshape(-1, bits)
    weights = 1 << np.arange(bits, dtype=np.uint64)
    return ((symbols == 1).astype(np.uint64) * weights).sum(axis=1)


async def open_objects(sectype, values_limbs, threshold):
    """Open limb shares through MPyC's own output (its recombination, its wire)."""
    field = sectype.field
    arr = field.array(np.array(LINK.to_ints(values_limbs), dtype=object), check=False)
    return [int(v) for v in (await mpc.output(arr, threshold=threshold)).value]


async def hostile_opening() -> dict:
    """The last party sends out-of-range limbs; the others must refuse them by name."""
    last = len(mpc.parties) - 1
    if mpc.pid == last:
        LINK.to_bytes = lambda a: b"\xff" * (LINK.wire_bytes * a.shape[1])
    try:
        await reveal_limbs("check.hostile", LINK, limb_shares.random_shares(LINK, 8), threshold=2)
    except limbs.MalformedShares as exc:
        return {"refused": str(exc)}
    return {"refused": None}


def holdings(party: int) -> list[int]:
    """The keys a party holds: each of 1..240 at a pseudorandom subset of parties."""
    return [k for k in range(1, 241) if ((k * 2654435761 + party * 40503) >> 7) % 8 > 1]


def column_values(party: int, key: int, width: int) -> list[int]:
    return [(key * (party + 2 + j)) % 997 + party for j in range(width)]


async def linkage_and_replay() -> dict:
    """Link keyed rows and replay columns; compare with the plaintext join."""
    m = len(mpc.parties)
    widths = [2, 1] + [1] * (m - 2)
    mine = holdings(mpc.pid)
    linkage = await link(hash_keys(mine, "check"), 5, "check")
    block = np.array([column_values(mpc.pid, k, widths[mpc.pid]) for k in mine], dtype=object)
    block = block.reshape(len(mine), widths[mpc.pid])
    table = await linked_table(linkage, block, widths, value_type())
    opened = np.array(await mpc.output(table)).reshape(-1, sum(widths)).tolist()
    everywhere = np.flatnonzero(linkage.group_sizes == m)  # people at every party
    replayed = {}
    kept = await linked_table(linkage, block, widths, value_type(), keep=everywhere,
                              on_replayed=lambda c, s: replayed.__setitem__(c, s.copy()))
    kept_rows = np.array(await mpc.output(kept)).reshape(-1, sum(widths)).tolist()
    stored = {c: s for c, s in replayed.items() if c % 2 == 0}  # every other column
    mixed = await linked_table(linkage, block, widths, value_type(), keep=everywhere,
                               stored=stored)
    mixed_rows = np.array(await mpc.output(mixed)).reshape(-1, sum(widths)).tolist()
    everyone = sorted(set().union(*(holdings(q) for q in range(m))))
    oracle = []
    for key in everyone:
        row = []
        for q in range(m):
            row += column_values(q, key, widths[q]) if key in holdings(q) else [0] * widths[q]
        oracle.append(row)
    counts = {}
    for key in everyone:
        k = sum(key in holdings(q) for q in range(m))
        counts[k] = counts.get(k, 0) + 1
    full = [row for row in oracle if all(row[sum(widths[:q])] for q in range(m))]
    return {"linked_rows_match_plaintext_join": sorted(map(tuple, opened))
            == sorted(map(tuple, oracle)),
            "kept_rows_match_the_inner_join": sorted(map(tuple, kept_rows))
            == sorted(map(tuple, full)) and len(full) > 0,
            "stored_columns_give_the_same_table": mixed_rows == kept_rows
            and sorted(replayed) == list(range(sum(widths))),
            "multiplicity_matches": linkage.multiplicity() == counts}


async def main():
    limb_shares.SLICE = 50  # many rounds per sharing, the last one partial
    await mpc.start()
    if os.environ.get("PPA_CHECK_HOSTILE"):
        await finish(await hostile_opening())
        return
    sectype, t = link_type(), mpc.threshold
    field, p = sectype.field, sectype.field.modulus
    mine = [secrets.randbelow(1 << 120) for _ in range(ROWS)] if mpc.pid == 0 else [0] * ROWS
    mine[:3] = [5, 5, p - 1] if mpc.pid == 0 else mine[:3]  # a repeated key and a -1
    x_share = await shares(mpc.input(sectype.array(field.array(mine)), senders=0))
    k_share = await shares(await prf.secret_keys(sectype, BITS))
    x_plain = [int(v) for v in (await mpc.output(sectype.array(field.array(x_share))))]
    k_plain = [int(v) for v in (await mpc.output(sectype.array(field.array(k_share))))]
    oracle = [sum(1 << j for j, k in enumerate(k_plain) if gmpy2.legendre(x + k, p) == 1)
              for x in x_plain]
    new = await prf.keyed_tags(LINK.from_ints(x_share), LINK.from_ints(k_share), chunk=CHUNK)
    old = await object_path_tags(sectype, x_share, k_share, BITS)

    n = 40
    r = limb_shares.random_shares(LINK, n)
    r_plain = await open_objects(sectype, r, t)
    r_again = LINK.to_ints(await reveal_limbs("check.random", LINK, r, threshold=t))
    zero = await open_objects(sectype, limb_shares.zero_shares(LINK, n), 2 * t)
    squares = await limb_shares.reshare(LINK, LINK.mul(r, r))
    squares_plain = await open_objects(sectype, squares, t)
    report = {
        "parties": len(mpc.parties), "threshold": t, **(await linkage_and_replay()),
        "tags_match_oracle": [int(v) for v in new] == oracle,
        "tags_match_object_path": [int(v) for v in new] == [int(v) for v in old],
        "repeated_key_same_tag": int(new[0]) == int(new[1]),
        "random_opens_alike": r_plain == r_again,
        "random_distinct": len(set(r_plain)) == n,
        "zero_sharing_opens_to_zero": zero == [0] * n,
        "reshare_of_square": squares_plain == [v * v % p for v in r_plain],
        "distinct_tags": len({int(v) for v in new}),
    }
    await finish(report)


if __name__ == "__main__":
    mpc.run(main())
