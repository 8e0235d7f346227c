"""The EMA teacher (paper section 3.3): teacher <- m * teacher + (1 - m) * student, every step."""

from __future__ import annotations

import copy

import pytest
import torch

from sohes_hf.training.ema import EmaTeacher


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5))


def test_update_is_the_paper_formula_parameter_by_parameter() -> None:
    student = _student()
    momentum = 0.9
    teacher = EmaTeacher(student, momentum)
    for _ in range(3):
        before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
        with torch.no_grad():
            for parameter in student.parameters():
                parameter.add_(torch.randn_like(parameter))
            student(torch.randn(5, 4))  # moves BatchNorm running statistics (float buffers)
        teacher.update(student)
        for name, value in teacher.module.state_dict().items():
            current = student.state_dict()[name]
            if value.is_floating_point():
                expected = momentum * before[name] + (1 - momentum) * current
                torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
            else:  # integer buffers (num_batches_tracked) are copied
                assert torch.equal(value, current)


def test_paper_momentum_moves_teacher_by_one_two_thousandth() -> None:
    student = _student()
    teacher = EmaTeacher(student, 0.9995)
    start = copy.deepcopy(teacher.module.state_dict())
    with torch.no_grad():
        student[0].weight.fill_(1.0)
    teacher.update(student)
    expected = 0.9995 * start["0.weight"] + 0.0005 * torch.ones_like(start["0.weight"])
    torch.testing.assert_close(teacher.module.state_dict()["0.weight"], expected, rtol=0, atol=1e-7)
    assert teacher.momentum == 0.9995


def test_teacher_has_no_gradients_and_stays_in_eval_mode() -> None:
    student = _student()
    teacher = EmaTeacher(student, 0.99)
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert all(p.requires_grad for p in student.parameters())
    teacher.train()
    assert not teacher.module.training
    out = teacher.module(torch.randn(3, 4))
    assert out.grad_fn is None  # no autograd graph is built for the teacher


@pytest.mark.parametrize("momentum", [0.0, 1.0, -0.5, 1.5])
def test_invalid_momentum_raises(momentum: float) -> None:
    with pytest.raises(ValueError, match="ema_momentum"):
        EmaTeacher(_student(), momentum)
