"""The one view-selection rule (data/cameras.py): the paper's input views of a 251-view
spiral, the same places on shorter spirals, and the views scored beside them."""
import numpy as np
import pytest

from minissd.data import cameras
from minissd.data.cameras import eval_view_ids, input_view_ids, scaled_view_ids


def test_a_251_view_spiral_gives_the_papers_views():
    # the official configs ssdnerf_cars_recons1v.py, ssdnerf_cars_recons2v.py
    assert input_view_ids(251, 1) == [64]
    assert input_view_ids(251, 2) == [64, 104]
    # the official recons{4,8,16,32}v configs: the official loader's evenly spread set
    for count in (3, 4, 8, 16, 32):
        official = np.round(np.linspace(0, 250, count)).astype(int).tolist()
        assert input_view_ids(251, count) == official
    assert scaled_view_ids([64, 104], 251) == [64, 104]


def test_short_spirals_take_the_nearest_view_at_the_same_place():
    # 64/251 of the way round: 12.75 of 50 views -> 13 (floor would give 12), 6.12 of 24 -> 6
    assert input_view_ids(50, 1) == scaled_view_ids([64], 50) == [13]
    assert input_view_ids(50, 2) == [13, 21]                       # 104 * 50 / 251 = 20.72
    assert input_view_ids(24, 2) == [6, 10]
    assert input_view_ids(128, 1) == [33]                          # 32.64 (the quickstart's spiral)
    assert input_view_ids(24, 4) == [0, 8, 15, 23]
    assert input_view_ids(5, 5) == [0, 1, 2, 3, 4]
    # 64 and 104 both land on view 2 of 6: the evenly spread rule keeps two distinct views
    assert input_view_ids(6, 2) == [0, 5]
    with pytest.raises(ValueError, match="input_view_ids: 7 input views, but the scene has 6"):
        input_view_ids(6, 7)


def test_reconstruct_and_evaluate_use_the_one_rule():
    from minissd.eval import evaluate
    from minissd.related import pose_eval
    from minissd.testtime import reconstruct
    assert reconstruct.input_view_ids is cameras.input_view_ids
    assert reconstruct.eval_view_ids is evaluate.eval_view_ids is cameras.eval_view_ids
    assert evaluate.scaled_view_ids is pose_eval.scaled_view_ids is cameras.scaled_view_ids
    for n in range(3, 260):                # a count of views and the paper's ids agree everywhere
        assert input_view_ids(n, 1) == scaled_view_ids([64], n)
        if n not in (3, 6):                                         # (64 and 104 collide there)
            assert input_view_ids(n, 2) == scaled_view_ids([64, 104], n)
        assert len(input_view_ids(n, 2)) == 2


def test_scored_views_every_kth_then_at_most_evenly_spread():
    assert eval_view_ids(10, [3]) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert eval_view_ids(24, [6], every=5) == [0, 5, 11, 16, 21]
    assert eval_view_ids(24, [6, 10], at_most=4) == [0, 8, 16, 23]
    assert eval_view_ids(10, [3], at_most=1) == [0]
    assert eval_view_ids(10, [3], at_most=20) == eval_view_ids(10, [3])
