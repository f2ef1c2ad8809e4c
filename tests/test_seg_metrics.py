"""Metrics against hand-computed cases, empty-mask conventions and per-case aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from segsynth.seg.metrics import METRIC_NAMES, MetricAccumulator, image_metrics


def square(size: int, top: int, left: int, side: int, label: int = 1, base: torch.Tensor | None = None) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.long) if base is None else base.clone()
    mask[top : top + side, left : left + side] = label
    return mask


def test_overlap_metrics_of_a_square_inside_a_square() -> None:
    target = square(16, 4, 4, 4)  # 16 px
    pred = square(16, 5, 5, 2)  # 4 px, all inside
    m = image_metrics(pred, target, 2)
    assert m["dice"][0] == pytest.approx(2 * 4 / (4 + 16))
    assert m["iou"][0] == pytest.approx(4 / 16)
    assert m["precision"][0] == pytest.approx(1.0)
    assert m["recall"][0] == pytest.approx(4 / 16)


@pytest.mark.parametrize("d", [1, 3, 6])
def test_hd95_of_two_squares_offset_by_d_is_d(d: int) -> None:
    a = square(40, 10, 10, 12)
    b = square(40, 10, 10 + d, 12)
    m = image_metrics(a, b, 2)
    assert m["hd95"][0] == pytest.approx(d)
    assert m["dice"][0] == pytest.approx((12 - d) / 12)


def test_distances_between_two_single_pixels() -> None:
    a = torch.zeros(20, 20, dtype=torch.long)
    b = a.clone()
    a[5, 5], b[8, 9] = 1, 1  # 3-4-5 triangle
    m = image_metrics(a, b, 2)
    assert m["hd95"][0] == pytest.approx(5.0)
    assert m["assd"][0] == pytest.approx(5.0)
    assert m["dice"][0] == 0.0


def test_empty_mask_conventions() -> None:
    empty = torch.zeros(30, 40, dtype=torch.long)
    full = square(30, 2, 2, 5, base=empty)
    both = image_metrics(empty, empty, 2)
    for name in ("dice", "iou", "precision", "recall"):
        assert both[name][0] == 1.0
    assert both["hd95"][0] == 0.0 and both["assd"][0] == 0.0
    diagonal = math.hypot(30, 40)  # 50 px
    for pred, target in ((full, empty), (empty, full)):
        one = image_metrics(pred, target, 2)
        for name in ("dice", "iou", "precision", "recall"):
            assert one[name][0] == 0.0
        assert one["hd95"][0] == pytest.approx(diagonal) and one["assd"][0] == pytest.approx(diagonal)


def test_classes_are_scored_separately() -> None:
    target = square(24, 2, 2, 6, label=1)
    target = square(24, 14, 14, 6, label=2, base=target)
    pred = square(24, 2, 2, 6, label=1)  # class 1 perfect, class 2 missed
    m = image_metrics(pred, target, 3)
    assert m["dice"].tolist() == [1.0, 0.0]
    assert m["hd95"][0] == 0.0 and m["hd95"][1] == pytest.approx(math.hypot(24, 24))
    absent = image_metrics(pred, square(24, 2, 2, 6, label=1), 3)
    assert absent["dice"].tolist() == [1.0, 1.0]  # class 2 empty on both sides


def test_per_case_aggregation_and_across_case_spread() -> None:
    acc = MetricAccumulator(["background", "lesion"])
    good = square(16, 4, 4, 6)
    empty = torch.zeros(16, 16, dtype=torch.long)
    acc.add("a1", "A", good, good)  # dice 1
    acc.add("a2", "A", empty, good)  # dice 0
    acc.add("b1", "B", good, good)  # dice 1
    cases = acc.per_case()
    assert cases["A"]["dice"]["lesion"] == 0.5 and cases["B"]["dice"]["lesion"] == 1.0
    stats = acc.summary()["dice"]["lesion"]
    assert stats["mean"] == pytest.approx(2 / 3)
    assert stats["std"] == pytest.approx(math.sqrt(2 / 9))
    assert stats["case_mean"] == pytest.approx(0.75)
    assert stats["case_std"] == pytest.approx(0.25)
    result = acc.result()
    assert result["num_images"] == 3 and result["num_cases"] == 2
    assert set(result["summary"]) == set(METRIC_NAMES)
    assert result["summary"]["dice"]["mean_fg"]["case_std"] == pytest.approx(0.25)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal"):
        image_metrics(torch.zeros(4, 4), torch.zeros(4, 5), 2)
    with pytest.raises(ValueError, match="background"):
        MetricAccumulator(["background"])
    with pytest.raises(ValueError, match="no image"):
        MetricAccumulator(["background", "x"]).summary()
