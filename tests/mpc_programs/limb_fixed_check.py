"""Run under MPyC's local launcher (``python limb_fixed_check.py -M3 -B PORT``).

Checks the limb-share protocols of :mod:`ppa_kernel.party.secure.limb_fixed` (random bits,
bounded pseudorandom sharings, truncated products, bit decompositions) against plaintext
oracles of the opened values, and the logistic function on limb shares against the same
function on MPyC's share arrays and against exact arithmetic; party 0 prints one JSON
line. Not collected by pytest: tests/test_limb_fixed.py starts it.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets

import numpy as np
from check_report import finish

from ppa_kernel.contract.models import MASKED_TRUNCATION
from ppa_kernel.party.secure import limb_fixed
from ppa_kernel.party.secure.limb_fixed import F, Shares
from ppa_kernel.party.secure.limbs import MalformedShares
from ppa_kernel.party.secure.logistic import LimbOps, ObjectOps, logistic
from ppa_kernel.party.secure.openings import (
    LEDGER,
    MASKED_COMPARISON,
    InconsistentOpening,
    masked,
    reveal_limbs,
)
from ppa_kernel.party.secure.runtime import (
    exchange,
    mpc,
    mpyc_random_bits,
    prss_input,
    shares,
    value_type,
)
from ppa_kernel.party.secure.truncation import carry_bound

N = 3000


def signed(v: int) -> int:
    return v - F.modulus if v > F.modulus // 2 else v


async def open_(x: Shares, threshold: int | None = None) -> list[int]:
    t = mpc.threshold if threshold is None else threshold
    return F.to_ints(await reveal_limbs("check.open", F, x.flat(), threshold=t))


async def shared(values: list[int]) -> Shares:
    """Limb shares of party 0's integers (signed values mod p)."""
    sectype = value_type()
    mine = [v % F.modulus for v in values] if mpc.pid == 0 else [0] * len(values)
    x = await shares(mpc.input(sectype.array(sectype.field.array(mine)), senders=0))
    return Shares.of(x)


async def products_and_dots(report: dict, rng) -> None:
    """Products in one round and in rounds of rows (broadcast like the query's cell
    weights), and the resharing dot products, against plaintext integers."""
    rows, cells = 70, 6
    a = [rng.randrange(-1000, 1000) for _ in range(rows * cells)]
    b = [rng.randrange(-(1 << 60), 1 << 60) for _ in range(rows)]
    x = (await shared(a)).reshape(rows, cells)
    y = (await shared(b)).reshape(rows, 1)
    want = [a[r * cells + c] * b[r] for r in range(rows) for c in range(cells)]
    [whole] = await limb_fixed.multiply([(x, y)])
    saved = limb_fixed.MULTIPLY_SLICE
    limb_fixed.MULTIPLY_SLICE = 50  # eight rows per round
    try:
        [by_rows] = await limb_fixed.multiply([(x, y)])
        [pair_a, pair_b] = await limb_fixed.multiply([(y, x), (x[:, :2], x[:, 3:5])])
        outer, = await limb_fixed.multiply([(Shares(x.limbs[:, :, :3, None]),
                                             Shares(x.limbs[:, :, None, 3:]))])
        first_row, = await limb_fixed.multiply([(x[:1], x)])  # one row against every row
    finally:
        limb_fixed.MULTIPLY_SLICE = saved
    report["products_one_round"] = [signed(v) for v in await open_(whole)] == want
    report["products_by_rows"] = [signed(v) for v in await open_(by_rows)] == want
    opened_a, opened_b = await open_(pair_a), await open_(pair_b)  # at every party
    report["products_pairs_by_rows"] = [signed(v) for v in opened_a] == want and [
        signed(v) for v in opened_b] == [
        a[r * cells + c] * a[r * cells + c + 3] for r in range(rows) for c in range(2)]
    opened_outer, opened_first = await open_(outer), await open_(first_row)
    report["products_outer_by_rows"] = [signed(v) for v in opened_outer] == [
        a[r * cells + i] * a[r * cells + 3 + j] for r in range(rows) for i in range(3)
        for j in range(3)]
    report["products_broadcast_row_by_rows"] = [signed(v) for v in opened_first] == [
        a[c] * a[r * cells + c] for r in range(rows) for c in range(cells)]
    dots = await limb_fixed.dot(x, whole)
    report["dot_products"] = [signed(v) for v in await open_(dots)] == [
        sum(a[r * cells + i] * want[r * cells + j] for r in range(rows))
        for i in range(cells) for j in range(cells)]
    sums = await open_(limb_fixed.column_sums(x))
    report["column_sums"] = [signed(v) for v in sums] == [
        sum(a[r * cells + c] for r in range(rows)) for c in range(cells)]


async def hostile_dealer() -> dict:
    """The last party deals the random bits and sends one element too few; party 0 must
    refuse its message by name."""
    limb_fixed.DEALER = len(mpc.parties) - 1  # at every party: the dealer is the last
    if mpc.pid == limb_fixed.DEALER:  # its first message, as random_bits sends it, short
        prss_input()
        short = bytes(F.wire_bytes * 7)
        await exchange({pid: short for pid in range(limb_fixed.DEALER)}, [])
        return {}
    try:
        await limb_fixed.random_bits(8)
    except MalformedShares as exc:
        return {"refused": str(exc)}
    return {"refused": None}


async def main():
    await mpc.start()
    if os.environ.get("PPA_CHECK_HOSTILE"):
        await finish(await hostile_dealer())
        return
    d, report = carry_bound(), {"parties": len(mpc.parties), "threshold": mpc.threshold}
    bits = await open_(await limb_fixed.random_bits(N))
    report["random_bits_are_bits"] = set(bits) <= {0, 1}
    report["random_bits_balanced"] = 0.45 < sum(bits) / N < 0.55
    again = await open_(await limb_fixed.random_bits(N))
    report["random_bits_differ_per_call"] = again != bits
    field = value_type().field
    drawn = await mpc.np_random_bits(field, N)  # a field array of shares, as MPyC's
    installed = [int(v) for v in (await mpc.output(drawn)).value]
    signs = await mpc.output(mpc.np_random_bits(value_type(), N, signed=True))
    report["mpyc_random_bits_installed"] = set(installed) <= {0, 1} and len(set(installed)) == 2
    report["mpyc_signed_random_bits"] = {int(v) for v in signs} == {-1, 1}
    length = 12
    values = [secrets.randbelow(1 << length) for _ in range(200)]
    secint = mpc.SecInt(40, p=field.modulus)
    x = mpc.input(secint.array(np.array([v if mpc.pid == 0 else 0 for v in values])), senders=0)
    with masked(MASKED_COMPARISON):
        opened_bits = await mpc.output(mpc.np_to_bits(x, length))
    report["mpyc_bit_decomposition_on_new_bits"] = np.array(opened_bits).astype(int).tolist() \
        == [[(v >> j) & 1 for j in range(length)] for v in values]
    scaled, high = limb_fixed.scaled_random_split(N, 20, 8)
    D = limb_fixed.scale()
    total, upper = await open_(scaled), await open_(high)
    report["scaled_randoms_are_multiples_of_D"] = all(v % D == 0 for v in total + upper)
    total, upper = [v // D for v in total], [v // D for v in upper]
    report["scaled_randoms_below_bound"] = max(total) < d << 20 and max(total) > 1 << 19
    report["scaled_randoms_high_parts"] = all(
        h << 8 <= v < (h + d) << 8 for v, h in zip(total, upper))

    rng = secrets.SystemRandom()
    x_plain = [rng.randrange(-(1 << 90), 1 << 90) for _ in range(N)]
    y_plain = [rng.randrange(-(1 << 60), 1 << 60) for _ in range(N)]
    x_plain[:4] = [0, -1, (1 << 90) - 1, -(1 << 90)]
    x, y = await shared(x_plain), await shared(y_plain)
    got = [signed(v) for v in await open_(await limb_fixed.truncate(x * y, 56, 153))]
    want = [a * b >> 56 for a, b in zip(x_plain, y_plain)]
    carries = {g - w for g, w in zip(got, want)}
    report["truncated_products_round_up_by_at_most_d"] = carries <= set(range(d + 1))
    report["truncation_carries_vary"] = len(carries) > 1
    got = [signed(v) for v in await open_(await limb_fixed.truncate(x, 30, 92))]
    report["truncation_of_degree_t_shares"] = all(
        0 <= g - (a >> 30) <= d for g, a in zip(got, x_plain))

    length = 9
    v_plain = [rng.randrange(1 << length) for _ in range(N)]
    v_plain[:3] = [0, 1, (1 << length) - 1]
    v = await shared(v_plain)
    digits = await limb_fixed.bits(v, length)
    opened = np.array(await open_(digits)).reshape(N, length)
    report["bits_match_plaintext"] = all(
        opened[i].tolist() == [(a >> j) & 1 for j in range(length)]
        for i, a in enumerate(v_plain))
    spill = await open_(await limb_fixed.out_of_range(v, digits))
    report["in_range_sum_is_zero"] = spill == [0]
    far = [1 << 60, -(1 << 45), 3]  # far outside 9 bits: a bound keeps them hidden
    LEDGER.record_values = True
    far_bits = await limb_fixed.bits(await shared(far), length, bound=64)
    masked_far = LEDGER.entries[-1]["values"]
    LEDGER.record_values = False
    report["bits_of_far_values_are_their_residues"] = np.array(
        await open_(far_bits)).reshape(3, length).tolist() == [
        [(a >> j) & 1 for j in range(length)] for a in far]
    report["far_values_stay_masked"] = all(
        (c >> 40) != (a + (1 << 65)) >> 40 for c, a in zip(masked_far, far))
    try:
        await reveal_limbs("check.inconsistent", F, (await shared([12, 7])).flat(),
                           threshold=mpc.threshold, divisor=6)
        report["inconsistent_opening_refused"] = False
    except InconsistentOpening as exc:
        report["inconsistent_opening_refused"] = "not a multiple of 6" in str(exc)
    wide = await shared([5, 1 << length, 7])
    spill = await open_(await limb_fixed.out_of_range(wide, await limb_fixed.bits(wide, length)))
    report["out_of_range_sum_is_nonzero"] = spill != [0]

    await products_and_dots(report, rng)

    u_real = np.concatenate([np.linspace(-240, 240, 201), np.linspace(-3, 3, 121),
                             [rng.uniform(-40, 40) for _ in range(300)]])
    u = await shares(mpc.input(value_type().array(value_type().field.array(
        [round(w * 2 ** 56) % F.modulus for w in u_real] if mpc.pid == 0
        else [0] * len(u_real))), senders=0))
    start = len(LEDGER.entries)
    forms = {}
    for name, ops in (("limbs", LimbOps), ("objects", ObjectOps)):
        with mpyc_random_bits() if name == "objects" else contextlib.nullcontext():
            p, w, spill = await logistic(u, ops)  # the reference: MPyC's own bits too
        opened_p = await open_(Shares.of(p))
        opened_w = await open_(Shares.of(w))
        forms[name] = (np.array([signed(a) / 2 ** 56 for a in opened_p]),
                       np.array([signed(a) / 2 ** 56 for a in opened_w]),
                       await open_(Shares.of(spill)))
        if name == "limbs":
            limb_names = {e["name"] for e in LEDGER.entries[start:]} - {"check.open"}
    want = 1 / (1 + np.exp2(u_real))
    for name, (p, w, spill) in forms.items():
        report[f"logistic_{name}_p"] = float(np.abs(p - want).max()) < 1e-13
        report[f"logistic_{name}_w"] = float(np.abs(w - want * (1 - want)).max()) < 1e-13
        report[f"logistic_{name}_in_range"] = spill == [0]
    report["logistic_forms_agree"] = float(np.abs(forms["limbs"][0] - forms["objects"][0])
                                           .max()) < 2e-13  # each within 1e-13
    report["limb_logistic_opens_only_masked_values"] = limb_names == {
        MASKED_TRUNCATION, MASKED_COMPARISON}
    report["relative_error"] = float(np.max(np.abs(forms["limbs"][0] / want - 1)[want > 1e-4]))
    # 2^-40 at three parties; carries of up to 10 units (five parties) cost 5 bits
    report["relative_error_small"] = report["relative_error"] < (1e-11 if d <= 3 else 2e-10)
    report["sanity"] = math.isclose(float(want[100]), 0.5)
    await finish(report)


if __name__ == "__main__":
    mpc.run(main())
