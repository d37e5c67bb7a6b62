"""The size planner of ``image_size: auto`` streams: predicted shares, steps with hysteresis."""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidInputError
from pipeline.jobs.sizing import SizePlanner, Stream
from pipeline.spec import AutoSize

LADDER = AutoSize((256, 512, 768, 1024), target_fps=2.0)
# frames a second the encoders take at each size: 13 at 512, the others scaled by the pixels
CAPACITY = {256: 52.0, 512: 13.0, 768: 13.0 * (512 / 768) ** 2, 1024: 3.25}


def streams(sizes: list[int], auto: AutoSize = LADDER, cap: float = 10.0, **kw: object) -> list[Stream]:
    return [Stream(f"s{i}", 1.0, size, cap, auto, **kw) for i, size in enumerate(sizes)]  # type: ignore[arg-type]


def settle(
    planner: SizePlanner, sizes: list[int], windows: int, start: float = 0.0, **kw: object
) -> list[int]:
    """Plan ``windows`` one-second windows, applying the changes as the driver does."""
    sizes = list(sizes)
    for w in range(windows):
        for change in planner.plan(streams(sizes, **kw), CAPACITY, start + w):
            sizes[int(change.key[1:])] = change.new
    return sizes


def test_overloaded_streams_move_down_together_to_sizes_that_meet_the_target() -> None:
    planner = SizePlanner()
    # 4 streams at 1024 get 0.8 fps each; at 512 they would get 3.25 (all at 768: 1.44, too
    # little); one at 768 beside three at 512 gets 2.47, 10 % over the target and more
    assert planner.plan(streams([1024] * 4), CAPACITY, 0.0) == []  # one window is not enough
    changes = planner.plan(streams([1024] * 4), CAPACITY, 1.0)
    assert sorted(c.new for c in changes) == [512, 512, 512, 768]
    assert all(c.old == 1024 and "below the target 2" in c.reason for c in changes)
    assert (
        changes[0].detail().startswith("1024 -> 768: at 1024 the encoders")
    )  # s0 had the larger size: it keeps it


def test_sizes_end_within_one_step_and_each_meets_its_target() -> None:
    top = settle(SizePlanner(hold_s=0), [1024] * 4, 40)
    assert sorted(top) == [512, 512, 512, 768], top
    assert settle(SizePlanner(hold_s=0), top, 20) == top  # it holds there
    # from the bottom, a step up must leave 30 % to spare: 768 beside three 512s leaves 23 %
    bottom = settle(SizePlanner(hold_s=0), [256] * 4, 40)
    assert bottom == [512] * 4, bottom


def test_a_size_moves_up_only_with_room_to_spare_and_after_some_windows() -> None:
    one = streams([256])
    planner = SizePlanner(up_after=4, hold_s=0.0)
    ups = [planner.plan(one, CAPACITY, float(t)) for t in range(4)]
    assert [len(u) for u in ups] == [0, 0, 0, 1] and ups[3][0].new == 512  # one step at a time
    # a stream that would be just at its target at the larger size stays where it is
    tight = {256: 52.0, 512: 2.1, 768: 1.0, 1024: 0.5}
    still = SizePlanner(up_after=1, hold_s=0.0)
    assert all(still.plan(streams([256]), tight, float(t)) == [] for t in range(5))


def test_a_change_holds_for_hold_s_before_moving_up() -> None:
    planner = SizePlanner(up_after=1, hold_s=5.0)
    sizes = settle(planner, [1024], 1)
    assert sizes == [1024]  # one stream alone at 1024 meets 2 fps (3.25), no change
    planner = SizePlanner(up_after=1, hold_s=5.0)
    assert planner.plan(streams([256]), CAPACITY, 0.0) == []  # a new stream settles first
    first = planner.plan(streams([256]), CAPACITY, 5.0)
    assert first and first[0].new == 512
    assert planner.plan(streams([512]), CAPACITY, 6.0) == []  # held
    assert planner.plan(streams([512]), CAPACITY, 10.0)[0].new == 768


def test_a_stream_slower_than_predicted_moves_down_and_stays_down() -> None:
    planner = SizePlanner(down_after=2, up_after=1, hold_s=0.0, ceiling_s=30.0)
    slow = dict(delivered_fps=1.0, bound=True)
    assert planner.plan(streams([512], **slow), CAPACITY, 0.0) == []  # type: ignore[arg-type]
    change = planner.plan(streams([512], **slow), CAPACITY, 1.0)  # type: ignore[arg-type]
    assert [c.new for c in change] == [256] and "delivered 1.00 fps" in change[0].reason
    # the prediction says 512 would do, but the measure said otherwise: not again for ceiling_s
    assert all(planner.plan(streams([256]), CAPACITY, t) == [] for t in (2.0, 10.0, 30.5))
    assert [c.new for c in planner.plan(streams([256]), CAPACITY, 32.0)] == [512]


def test_a_stream_just_moved_is_not_judged_by_its_rate_until_it_settles() -> None:
    """The first frames at a new size wait for its model: two windows without a frame right after
    a change are no reason to move again."""
    planner = SizePlanner(down_after=2, hold_s=8.0)
    sizes = settle(planner, [1024] * 4, 2)
    assert sizes == [768, 512, 512, 512]
    stalled = [Stream(f"s{i}", 1.0, z, 10.0, LADDER, 0.0, True) for i, z in enumerate(sizes)]
    assert planner.plan(stalled, CAPACITY, 2.0) == [] and planner.plan(stalled, CAPACITY, 3.0) == []
    # once settled, a stream that still delivers nothing moves down
    planner.plan(stalled, CAPACITY, 10.0)
    assert [c.new for c in planner.plan(stalled, CAPACITY, 11.0)] == [512, 256, 256, 256]


def test_when_nothing_meets_the_target_the_smallest_size_is_the_best_there_is() -> None:
    sizes = settle(SizePlanner(), [512] * 4, 3, auto=AutoSize((256, 512), target_fps=50.0))
    assert sizes == [256] * 4


def test_fixed_streams_and_streams_without_a_target_are_left_alone() -> None:
    planner = SizePlanner(down_after=1)
    fixed = [Stream("f", 1.0, 1024, 10.0, None)]
    no_target = [Stream("t", 1.0, 1024, None, AutoSize((256, 1024)))]  # its feed's rate not known yet
    assert planner.plan(fixed, CAPACITY, 0.0) == [] and planner.plan(no_target, CAPACITY, 0.0) == []
    assert planner.plan(streams([1024]), {}, 0.0) == []  # nothing measured: no plan
    # fixed streams' load counts in the auto streams' shares: beside two at 1024, 512 is too much
    mixed = [Stream("f", 1.0, 1024, 10.0, None), Stream("g", 1.0, 1024, 10.0, None), *streams([512])]
    planner.plan(mixed, CAPACITY, 0.0)
    assert [c.new for c in planner.plan(mixed, CAPACITY, 1.0)] == [256]


def test_without_a_target_an_auto_stream_keeps_up_with_its_feed() -> None:
    feed = [Stream("s0", 1.0, 1024, 10.0, AutoSize((256, 512, 1024)))]  # target: the feed's 10 fps
    assert feed[0].target == 10.0
    assert [c.new for c in SizePlanner(down_after=1).plan(feed, CAPACITY, 0.0)] == [256]


@pytest.mark.parametrize("sizes", [(), (512, 256), (256, 256), (8,)])
def test_an_auto_ladder_must_be_ascending_sizes(sizes: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInputError, match="ascending"):
        AutoSize(sizes)


def test_a_new_stream_is_not_judged_by_its_rate_while_its_source_opens() -> None:
    planner = SizePlanner(down_after=2, hold_s=8.0)
    opening = [Stream("s0", 1.0, 1024, 10.0, LADDER, 0.0, True)]  # bound, nothing delivered yet
    assert all(planner.plan(opening, {1024: 3.25, 768: 5.8}, float(t)) == [] for t in range(8))
    planner.plan(opening, {1024: 3.25, 768: 5.8}, 8.0)
    assert [c.new for c in planner.plan(opening, {1024: 3.25, 768: 5.8}, 9.0)] == [768]
