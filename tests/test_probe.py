"""Feature-update probes (paper Definition 5): δ¹ = s·B·ΔA·z, δ² = s·ΔB·A·z, δ³ = s·ΔB·ΔA·z."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tiny import lora_llama

from loraplus import create_optimizer
from loraplus.autoratio import AutoRatioConfig
from loraplus.experiments.lora_mlp import teacher_student
from loraplus.probe import (
    FeatureUpdate,
    FeatureUpdateProbe,
    feature_update_terms,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_terms_match_a_direct_computation_and_sum_to_the_change() -> None:
    g = torch.Generator().manual_seed(0)
    n_in, n_out, r, s = 12, 10, 3, 0.5
    a0, b0 = torch.randn(r, n_in, generator=g), torch.randn(n_out, r, generator=g)
    a1, b1 = (
        a0 + 0.1 * torch.randn(r, n_in, generator=g),
        b0 + 0.2 * torch.randn(n_out, r, generator=g),
    )
    z = torch.randn(2, 4, n_in, generator=g)
    zt = z.reshape(-1, n_in)
    d1 = s * (b0 @ (a1 - a0) @ zt.T)  # associated the other way round from the module
    d2 = s * ((b1 - b0) @ a0 @ zt.T)
    d3 = s * ((b1 - b0) @ (a1 - a0) @ zt.T)
    got = feature_update_terms(a0, b0, a1, b1, z, s)
    for value, term in zip(got, (d1, d2, d3), strict=True):
        assert value == pytest.approx(term.pow(2).mean().sqrt().item(), rel=1e-5)
    total = s * (b1 @ a1 - b0 @ a0) @ zt.T
    torch.testing.assert_close(d1 + d2 + d3, total, rtol=1e-5, atol=1e-5)


def probe_one_step(ratio: float) -> list[FeatureUpdate]:
    model = lora_llama()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    opt = create_optimizer(model, "adamw", lr=1e-3, ratio=ratio)
    probe = FeatureUpdateProbe(model)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(2))
    model(input_ids=ids, labels=ids).loss.backward()
    probe.snapshot()
    opt.step()
    updates = probe.measure()
    probe.remove()
    return updates


def test_ratio_scales_b_share_and_leaves_a_share() -> None:
    plain, plus = probe_one_step(1.0), probe_one_step(16.0)
    assert len(plain) == len(plus) == 14
    for u1, u16 in zip(plain, plus, strict=True):
        assert u1.layer == u16.layer
        # Adam's first step is sign-like: ΔA is the same, ΔB is 16 times larger.
        assert u16.delta_a == pytest.approx(u1.delta_a, rel=1e-4)
        assert u16.delta_b == pytest.approx(16 * u1.delta_b, rel=1e-3)
        assert u16.balance == pytest.approx(u1.balance + 4, abs=1e-3)


def test_balance_of_a_frozen_matrix() -> None:
    assert FeatureUpdate("l", "default", 0.0, 1.0, 0.0).balance == math.inf
    assert FeatureUpdate("l", "default", 2.0, 0.5, 0.0).balance == -2.0


def test_probe_needs_lora_layers() -> None:
    with pytest.raises(ValueError, match="no PEFT LoRA Linear layer to probe"):
        FeatureUpdateProbe(torch.nn.Linear(4, 4))


def test_probe_records_inputs_only_while_recording() -> None:
    model = lora_llama()
    probe = FeatureUpdateProbe(model, max_tokens=5)
    ids = torch.randint(0, 128, (2, 4), generator=torch.Generator().manual_seed(0))
    probe.recording = False
    model(input_ids=ids)
    assert probe.inputs == {}
    probe.recording = True
    model(input_ids=ids)
    assert len(probe.inputs) == len(probe.layers) == 14
    assert all(x.shape[0] == 5 for x in probe.inputs.values())  # 8 tokens, capped at max_tokens
    probe.remove()


def test_half_precision_adapters_are_probed_in_float32_with_one_warning() -> None:
    """fp16 adapters: δ's from float32 sums (fp16 squares of ~1e-5 underflow to 0), and one
    warning naming the share of A's entries whose update rounded away."""
    model = lora_llama()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    model.half()  # a model cast after get_peft_model: the adapters are fp16 too
    opt = create_optimizer(model, "sgd", lr=1e-3)
    probe = FeatureUpdateProbe(model)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(2))

    def step() -> list[tuple[torch.Tensor, ...]]:
        model(input_ids=ids, labels=ids).loss.float().backward()
        probe.snapshot()
        before = [(a.detach().clone(), b.detach().clone()) for _, _, a, b, _ in probe._adapters()]
        z = [probe.inputs[name] for name, *_ in probe._adapters()]
        opt.step()
        opt.zero_grad()
        after = [(a.detach().clone(), b.detach().clone()) for _, _, a, b, _ in probe._adapters()]
        return [(*x, *y, w) for x, y, w in zip(before, after, z, strict=True)]

    tensors = step()
    with pytest.warns(UserWarning, match=r"did not move") as caught:
        rows = probe.measure()
    unmoved = sum(int((a1 == a0).sum()) for a0, _, a1, _, _ in tensors)
    share = unmoved / sum(a0.numel() for a0, *_ in tensors)
    assert 0 < share < 1 and f"{share:.0%} of A's entries did not move" in str(caught[0].message)
    assert len(rows) == 14 and all(u.delta_b > 0 for u in rows)
    scalings = [s for *_, s in probe._adapters()]
    for u, (a0, b0, _, b1, z), s in zip(rows, tensors, scalings, strict=True):
        by_hand = s * ((b1.double() - b0.double()) @ a0.double() @ z.double().T)
        assert u.delta_b == pytest.approx(by_hand.pow(2).mean().sqrt().item(), rel=1e-4)
    step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per probe, not one per step
        probe.measure()


def test_hooks_registered_after_torch_compile_warn_with_the_fix() -> None:
    model, _ = teacher_student(16)  # a PEFT LoRA MLP: quick to trace
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    compiled(x).pow(2).mean().backward()  # the graph is built without the hooks below
    cfg = AutoRatioConfig(signal="inputs", every=1)
    opt = create_optimizer(model, "adamw", lr=1e-3, ratio="auto", auto_ratio=cfg)
    probe = FeatureUpdateProbe(model)
    compiled(x).pow(2).mean().backward()
    probe.snapshot()
    with pytest.warns(UserWarning, match=r"fell back to the isotropic.*torch._dynamo.reset"):
        opt.step()
    with pytest.warns(UserWarning, match=r"probe measured nothing.*torch._dynamo.reset"):
        assert probe.measure() == []
    torch._dynamo.reset()  # the fix the warning names: the hooks fire again
    compiled(x).pow(2).mean().backward()
    probe.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
        assert len(probe.measure()) == 2
