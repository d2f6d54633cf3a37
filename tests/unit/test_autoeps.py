"""AutoEpsScheduler: Algorithm 1 on a scripted run, the forwarded scheduler interface, checkpoints, input checks."""
import io

import pytest
import torch

import lirpa_reweight  # noqa: F401  (patches auto_LiRPA before it is imported)
from auto_LiRPA.eps_scheduler import FixedScheduler, LinearScheduler, SmoothedScheduler
from lirpa_reweight.core.autoeps import AutoEpsScheduler

MAXOFF = 0.4
NUM_EXAMPLES = 6


def linear_base():
    # eps_base over 3 epochs of 2 batches: 0.1, 0.15 | 0.2, 0.25 | 0.3, 0.3
    base = LinearScheduler(0.3, "start=0,length=3")
    base.set_epoch_length(2)
    return base


# (indices, margins) per epoch and batch; example 5 is never visited, example 4 only in epoch 3;
# examples 1 and 3 flip sign, example 2 ends on a margin of exactly 0.
SCRIPT = [
    [([0, 1], [-0.5, 0.2]), ([2, 3], [-1.0, -0.25])],
    [([3, 0], [0.4, -0.1]), ([1, 2], [-0.75, -0.3])],
    [([2, 4], [0.0, -0.6]), ([1, 0], [0.9, -0.05])],
]
# Written by hand from Algorithm 1 with maxoff = 0.4: eps = max(eps_base - off, 0), then off = -margin * maxoff
# where margin < 0, else 0.
EXPECTED_EPS = [
    [[0.1, 0.1], [0.15, 0.15]],    # no offsets yet; then off0 = 0.2, off2 = 0.4, off3 = 0.1
    [[0.1, 0.0], [0.25, 0.0]],     # 0.2-off3, 0.2-off0; off3 = 0, off0 = 0.04 | 0.25-0, max(0.25-0.4, 0); off1 = 0.3, off2 = 0.12
    [[0.18, 0.3], [0.0, 0.26]],    # 0.3-off2, 0.3-0 | 0.3-off1, 0.3-off0; off2 = 0, off4 = 0.24 | off1 = 0, off0 = 0.02
]
EXPECTED_OFFSETS_AFTER_EPOCH = [
    [0.2, 0.0, 0.4, 0.1, 0.0, 0.0],
    [0.04, 0.3, 0.12, 0.0, 0.0, 0.0],
    [0.02, 0.0, 0.0, 0.0, 0.24, 0.0],
]


def run_epoch(scheduler, epoch):
    scheduler.train()
    scheduler.step_epoch(verbose=False)
    seen = []
    for indices, margins in SCRIPT[epoch]:
        scheduler.step_batch()
        indices = torch.tensor(indices)
        seen.append(scheduler.eps(indices).tolist())
        scheduler.update(indices, torch.tensor(margins))
    return seen


def test_scripted_three_epochs_follow_algorithm_1():
    scheduler = AutoEpsScheduler(linear_base(), NUM_EXAMPLES, MAXOFF, device="cpu")
    for epoch in range(3):
        seen = run_epoch(scheduler, epoch)
        for got, expected in zip(seen, EXPECTED_EPS[epoch]):
            assert got == pytest.approx(expected, abs=1e-6)
        assert scheduler.offsets.tolist() == pytest.approx(EXPECTED_OFFSETS_AFTER_EPOCH[epoch], abs=1e-6)
    # The never-visited example trains at eps_base.
    assert scheduler.eps(torch.tensor([5])).tolist() == pytest.approx([0.3])
    stats = scheduler.stats()
    assert stats["mean_offset"] == pytest.approx(0.26 / 6, abs=1e-6)
    assert stats["fraction_offset"] == pytest.approx(2 / 6)
    assert stats["max_offset"] == pytest.approx(0.24, abs=1e-6)


def test_maxoff_zero_is_the_base_schedule():
    scheduler = AutoEpsScheduler(FixedScheduler(0.3), NUM_EXAMPLES, 0.0, device="cpu")
    scheduler.update(torch.tensor([0, 1]), torch.tensor([-1.0, -0.5]))
    assert scheduler.eps(torch.tensor([0, 1, 2])).tolist() == pytest.approx([0.3, 0.3, 0.3])


def test_eval_mode_uses_eps_base_and_does_not_update():
    scheduler = AutoEpsScheduler(FixedScheduler(0.3), NUM_EXAMPLES, MAXOFF, device="cpu")
    scheduler.update(torch.tensor([0, 1]), torch.tensor([-1.0, -0.5]))
    assert scheduler.eps(torch.tensor([0, 1, 2])).tolist() == pytest.approx([0.0, 0.1, 0.3])
    scheduler.eval()
    assert not scheduler.is_training and not scheduler.base.is_training
    assert scheduler.eps(torch.tensor([0, 1, 2])).tolist() == pytest.approx([0.3, 0.3, 0.3])
    scheduler.update(torch.tensor([2]), torch.tensor([-1.0]))
    # Evaluation indices may index a larger test set.
    assert scheduler.eps(torch.tensor([NUM_EXAMPLES + 10])).tolist() == pytest.approx([0.3])
    scheduler.update(torch.tensor([NUM_EXAMPLES + 10]), torch.tensor([-1.0]))
    assert scheduler.offsets.tolist() == pytest.approx([0.4, 0.2, 0.0, 0.0, 0.0, 0.0])
    scheduler.train()
    assert scheduler.eps(torch.tensor([0, 1, 2])).tolist() == pytest.approx([0.0, 0.1, 0.3])


@pytest.mark.parametrize("make_base", [
    lambda: LinearScheduler(0.3, "start=2,length=3"),
    lambda: SmoothedScheduler(0.3, "start=2,length=3,mid=0.4"),
])
def test_drop_in_for_the_base_scheduler(make_base):
    """The loop of auto_LiRPA's examples gives the same eps_base sequence with or without the wrapper."""
    plain, wrapped = make_base(), AutoEpsScheduler(make_base(), 10, MAXOFF, device="cpu")
    for epoch in range(7):
        trace = []
        for scheduler in (plain, wrapped):
            scheduler.train()
            scheduler.step_epoch()
            scheduler.set_epoch_length(4)
            for _ in range(4):
                scheduler.step_batch()
                scheduler.update_loss(1.0)
                trace.append((scheduler.get_eps(), scheduler.get_max_eps(), scheduler.reached_max_eps()))
            scheduler.eval()
            trace.append(scheduler.get_eps())
        assert trace[:5] == trace[5:]
    assert wrapped.reached_max_eps() and wrapped.get_eps() == pytest.approx(0.3)


def save_and_load(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_resumes_exactly():
    original = AutoEpsScheduler(linear_base(), NUM_EXAMPLES, MAXOFF, device="cpu")
    run_epoch(original, 0)
    run_epoch(original, 1)
    state = save_and_load(original.state_dict())

    # A fresh base with its own (different) maxoff: both are restored from the state.
    resumed = AutoEpsScheduler(linear_base(), NUM_EXAMPLES, maxoff=0.01, device="cpu")
    resumed.load_state_dict(state)
    assert resumed.maxoff == MAXOFF
    assert torch.equal(resumed.offsets, original.offsets)
    assert resumed.get_eps() == original.get_eps()
    assert run_epoch(resumed, 2) == run_epoch(original, 2)
    assert torch.equal(resumed.offsets, original.offsets)


def test_mismatched_state_dict_is_refused():
    state = AutoEpsScheduler(linear_base(), NUM_EXAMPLES, MAXOFF, device="cpu").state_dict()
    other = AutoEpsScheduler(linear_base(), NUM_EXAMPLES + 1, MAXOFF, device="cpu")
    with pytest.raises(ValueError, match="holds offsets for 6 examples, but this scheduler has 7"):
        other.load_state_dict(state)
    smoothed = AutoEpsScheduler(SmoothedScheduler(0.3, "start=1,length=2"), NUM_EXAMPLES, MAXOFF, device="cpu")
    with pytest.raises(ValueError, match="saved around a LinearScheduler, not this SmoothedScheduler"):
        smoothed.load_state_dict(state)
    assert torch.equal(other.offsets, torch.zeros(NUM_EXAMPLES + 1))


@pytest.mark.parametrize("maxoff", [-0.1, float("nan"), float("inf")])
def test_bad_maxoff(maxoff):
    with pytest.raises(ValueError, match=r"bad value maxoff=.*: a finite number >= 0 \(pixel units"):
        AutoEpsScheduler(FixedScheduler(0.3), NUM_EXAMPLES, maxoff)


@pytest.mark.parametrize("num_examples", [0, -3, 2.5, True])
def test_bad_num_examples(num_examples):
    with pytest.raises(ValueError, match="num_examples must be a positive int"):
        AutoEpsScheduler(FixedScheduler(0.3), num_examples, MAXOFF)


def test_base_must_be_a_scheduler():
    with pytest.raises(TypeError, match="eps scheduler interface; float lacks"):
        AutoEpsScheduler(0.3, NUM_EXAMPLES, MAXOFF)


@pytest.fixture
def visited():
    scheduler = AutoEpsScheduler(FixedScheduler(0.3), NUM_EXAMPLES, MAXOFF, device="cpu")
    scheduler.update(torch.tensor([0, 3]), torch.tensor([-0.5, -0.25]))
    return scheduler


@pytest.mark.parametrize("method", ["eps", "update"])
def test_bad_indices(visited, method):
    def call(indices):
        if method == "eps":
            return visited.eps(indices)
        return visited.update(indices, torch.zeros(len(indices)))

    with pytest.raises(TypeError, match="integer dtype, got torch.float32"):
        call(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="indices must be a tensor"):
        call([0, 1])
    with pytest.raises(ValueError, match=r"1-D \(B,\), got shape \(2, 1\)"):
        call(torch.tensor([[0], [1]]))
    with pytest.raises(IndexError, match=r"\[0, 6\); got \[6, -1\]"):
        call(torch.tensor([1, 6, -1]))
    assert visited.offsets.tolist() == pytest.approx([0.2, 0, 0, 0.1, 0, 0])


def test_int32_indices_are_accepted(visited):
    assert visited.eps(torch.tensor([0, 3], dtype=torch.int32)).tolist() == pytest.approx([0.1, 0.2])


def test_bad_margins_leave_offsets_unchanged(visited):
    indices = torch.tensor([1, 0, 3])
    with pytest.raises(ValueError, match=r"shape \(3,\) like indices, got \(2,\)"):
        visited.update(indices, torch.tensor([-0.5, -0.5]))
    with pytest.raises(ValueError, match=r"1 bad value\(s\) \[nan\] at batch positions \[1\]"):
        visited.update(indices, torch.tensor([-0.5, float("nan"), -0.5]))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]; 2 bad value\(s\)"):
        visited.update(indices, torch.tensor([-1.5, 0.0, float("inf")]))
    assert visited.offsets.tolist() == pytest.approx([0.2, 0, 0, 0.1, 0, 0])


def test_deferred_margin_check_leaves_the_offsets_and_raises_from_check():
    from auto_LiRPA.eps_scheduler import FixedScheduler
    from lirpa_reweight.core.autoeps import AutoEpsScheduler
    scheduler = AutoEpsScheduler(FixedScheduler(0.1), 4, maxoff=0.5, device="cpu", sync_checks=False)
    scheduler.train()
    scheduler.update(torch.tensor([0, 1]), torch.tensor([-0.5, float("nan")]))
    assert scheduler.offsets.tolist() == [0.0, 0.0, 0.0, 0.0]
    scheduler.update(torch.tensor([2, 3]), torch.tensor([-0.5, 0.2]))
    assert scheduler.offsets.tolist() == [0.0, 0.0, 0.25, 0.0]
    with pytest.raises(ValueError, match=r"epoch 2: AutoEpsScheduler.update got margins .* in 1 value\(s\)"):
        scheduler.check("epoch 2")
