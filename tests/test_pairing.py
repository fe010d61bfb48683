"""PairSchedule: determinism, distributions, allow_same, all_pairs coverage, validation."""

from collections import Counter

import pytest

from msclr_core.errors import ConfigError
from msclr_core.pairing import PairSchedule

CONVS = ["ntu-rgb+d", "smplx_42", "h36m_17"]


@pytest.mark.parametrize("policy", ["full_random", "half_random", "all_pairs"])
def test_pairs_are_a_pure_function_of_seed_epoch_step(policy):
    a = PairSchedule(CONVS, policy=policy, seed=7)
    b = PairSchedule(CONVS, policy=policy, seed=7)  # "another rank" / "after a resume"
    epoch3 = a.pairs_for_epoch(3, 50)
    assert epoch3 == b.pairs_for_epoch(3, 50)
    assert [b.pair(3, s) for s in reversed(range(50))] == epoch3[::-1]  # call order is irrelevant
    assert epoch3 != a.pairs_for_epoch(4, 50)  # a new epoch gives new pairs
    assert epoch3 != PairSchedule(CONVS, policy=policy, seed=8).pairs_for_epoch(3, 50)
    assert all(q in CONVS and k in CONVS for q, k in epoch3)


def test_full_random_is_roughly_uniform_and_independent():
    pairs = PairSchedule(CONVS, seed=0).pairs_for_epoch(1, 9000)
    counts = Counter(pairs)
    assert len(counts) == 9  # every ordered pair, same-convention ones included
    for n in counts.values():  # expected 1000 each; 6 sigma is about 180
        assert 800 < n < 1200
    q_counts = Counter(q for q, _ in pairs)
    assert all(2700 < n < 3300 for n in q_counts.values())


@pytest.mark.parametrize("policy", ["full_random", "half_random", "all_pairs"])
def test_allow_same_false_never_pairs_a_convention_with_itself(policy):
    pairs = PairSchedule(CONVS, policy=policy, allow_same=False, seed=1).pairs_for_epoch(2, 600)
    assert all(q != k for q, k in pairs)
    # every ordered pair of distinct conventions still occurs (half_random: those with the anchor)
    assert len(set(pairs)) == (4 if policy == "half_random" else 6)


def test_full_random_allow_same_false_is_uniform_over_distinct_pairs():
    counts = Counter(PairSchedule(CONVS, allow_same=False, seed=3).pairs_for_epoch(0, 6000))
    assert all(850 < n < 1150 for n in counts.values()) and len(counts) == 6


def test_half_random_always_contains_the_anchor_on_either_side():
    sched = PairSchedule(CONVS, policy="half_random", anchor="smplx_42", seed=2)
    pairs = sched.pairs_for_epoch(5, 2000)
    assert all("smplx_42" in p for p in pairs)
    # P(q = anchor) = 1/2 (anchor drawn as query) + 1/2 * 1/3 (anchor is the key, q drawn = anchor)
    anchor_as_query = sum(q == "smplx_42" for q, _ in pairs)
    anchor_as_key = sum(k == "smplx_42" for _, k in pairs)
    assert 1250 < anchor_as_query < 1420 and 1250 < anchor_as_key < 1420
    others = Counter(k if q == "smplx_42" else q for q, k in pairs)
    assert set(others) == set(CONVS)
    # default anchor: the first convention
    assert all("ntu-rgb+d" in p for p in PairSchedule(CONVS, policy="half_random").pairs_for_epoch(0, 200))


def test_all_pairs_covers_every_ordered_pair_in_each_cycle():
    for allow_same, cycle in ((True, 9), (False, 6)):
        sched = PairSchedule(CONVS, policy="all_pairs", allow_same=allow_same, seed=4)
        pairs = sched.pairs_for_epoch(1, 4 * cycle + 3)
        for c in range(4):
            block = pairs[c * cycle : (c + 1) * cycle]
            assert len(set(block)) == cycle, (allow_same, c)
        assert pairs[:cycle] != pairs[cycle : 2 * cycle] or pairs[:cycle] != pairs[2 * cycle : 3 * cycle]
        assert pairs[:cycle] != sched.pairs_for_epoch(2, cycle)  # reshuffled per epoch


def test_single_convention_is_plain_single_skeleton_training():
    for policy in ("full_random", "half_random", "all_pairs"):
        sched = PairSchedule(["ntu-rgb+d"], policy=policy)
        assert set(sched.pairs_for_epoch(0, 20)) == {("ntu-rgb+d", "ntu-rgb+d")}


def test_validation_errors_name_the_field():
    with pytest.raises(ConfigError, match="pairing policy"):
        PairSchedule(CONVS, policy="round_robin")
    with pytest.raises(ConfigError, match="conventions"):
        PairSchedule([])
    with pytest.raises(ConfigError, match="allow_same"):
        PairSchedule(["ntu-rgb+d"], allow_same=False)
    with pytest.raises(ConfigError, match="anchor"):
        PairSchedule(CONVS, policy="half_random", anchor="coco_17")
    with pytest.raises(ConfigError, match="duplicate"):
        PairSchedule(["ntu-rgb+d", "ntu-rgb+d"])


def test_warmup_epochs_give_same_convention_pairs_then_the_policy():
    convs = ["ntu-rgb+d", "smplx_42", "h36m_17"]
    plain = PairSchedule(convs, seed=3)
    warm = PairSchedule(convs, seed=3, warmup_epochs=2)
    for epoch in (1, 2):
        pairs = warm.pairs_for_epoch(epoch, 60)
        assert all(q == k for q, k in pairs)
        assert [q for q, _ in pairs] == [q for q, _ in plain.pairs_for_epoch(epoch, 60)]  # the drawn query side
        assert len({q for q, _ in pairs}) == 3  # every convention still trains
    assert warm.pairs_for_epoch(3, 60) == plain.pairs_for_epoch(3, 60)
    assert any(q != k for q, k in warm.pairs_for_epoch(3, 60))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        PairSchedule(convs, warmup_epochs=-1)
