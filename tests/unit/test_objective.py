"""The training objective: plain BCE per task, plus cumulative-link cut points for graded labels."""

from __future__ import annotations

import math

import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce

from muxrec.pipelines.loop import Objective
from muxrec.spec import ModelInputs

from tests.helpers import tiny_spec

SIZES = {"color": 5, "tags": 6, "title": 17}


def _inputs(labels):
    return ModelInputs.from_spec(tiny_spec(labels=labels), SIZES)


def _logit(p):
    return math.log(p / (1 - p))


def test_without_grades_it_is_binary_cross_entropy():
    inputs = _inputs([{"name": "click", "source": "y"}, {"name": "buy", "source": "z"}])
    logits, labels = torch.randn(16, 2), torch.randint(0, 2, (16, 2)).float()
    objective = Objective(inputs, {})
    assert torch.allclose(objective(logits, labels), bce(logits, labels))
    # A model predicting only the first task is scored on it alone.
    assert torch.allclose(objective(logits[:, :1], labels), bce(logits[:, :1], labels[:, :1]))


def test_grades_share_the_task_score_with_fixed_log_odds_offsets():
    inputs = _inputs([{"name": "click", "source": "stars", "threshold": 4, "grades": [3, 5]}])
    rates = {"click": 0.5, "click@3": 0.8, "click@5": 0.2}
    objective = Objective(inputs, rates)
    offsets = torch.tensor([_logit(0.8), _logit(0.2)])  # minus logit(0.5) = 0
    stars = torch.tensor([1, 3, 4, 5, 5, 2, 4, 3])
    labels = torch.stack([stars >= 4, stars >= 3, stars >= 5], 1).float()  # label_columns order
    s = torch.randn(8, 1)
    expected = bce(torch.cat([s, s + offsets], 1), labels)
    assert torch.allclose(objective(s, labels), expected)


def test_a_five_pushes_the_score_up_harder_than_a_four_and_a_one_down_harder_than_a_three():
    inputs = _inputs([{"name": "click", "source": "stars", "threshold": 4, "grades": [2, 3, 5]}])
    objective = Objective(inputs, {"click": 0.55, "click@2": 0.94, "click@3": 0.83, "click@5": 0.21})
    stars = torch.tensor([1, 3, 4, 5])
    labels = torch.stack([stars >= 4, stars >= 2, stars >= 3, stars >= 5], 1).float()
    s = torch.zeros(4, 1, requires_grad=True)
    objective(s, labels).backward()
    g = s.grad[:, 0]  # gradient descent moves s by -g
    assert g[3] < g[2] < 0 < g[1] < g[0]
    # Binary labels cannot tell a 5 from a 4.
    plain = torch.zeros(4, 1, requires_grad=True)
    Objective(_inputs([{"name": "click", "source": "stars", "threshold": 4}]), {})(plain, labels[:, :1]).backward()
    assert plain.grad[3, 0] == plain.grad[2, 0] and plain.grad[0, 0] == plain.grad[1, 0]
