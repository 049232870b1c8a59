"""Head -> block groups -> tail reproduces the diffusers forward bit for bit.

Bitwise is expected (not just close): each segment runs the same modules with the same operations in
the same order as the diffusers forward, on the same device and dtype.
"""

import pytest
import torch

from deltadit.errors import DeltaDiTError
from deltadit.models import split
from deltadit.plan import BlockGroup, build_plan
from tests.conftest import build_dit, build_pixart


def run_split(s, feeds):
    head_seg = s.segments[0]
    out = dict(zip(head_seg.outputs, s.modules["head"](*[feeds[n] for n in head_seg.inputs])))
    h = out["hidden_states"]
    for seg in s.segments[1:-1]:
        h = s.modules[seg.name](*[h if n == "hidden_states" else out[n] for n in seg.inputs])
    tail = s.segments[-1]
    return s.modules["tail"](*[h if n == "hidden_states" else out[n] for n in tail.inputs])


@pytest.mark.parametrize("n_c,b", [(0, 0), (3, 2), (2, 0), (6, 3)])
def test_pixart_split_bitwise(n_c, b):
    model = build_pixart()
    plan = build_plan(4, 6, n_c, b)
    s = split(model, plan.groups)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 500])
    text, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1.0]])
    with torch.no_grad():
        ref = model(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask).sample
        out = run_split(s, {"sample": x, "timestep": t, "encoder_hidden_states": text, "encoder_attention_mask": mask})
    assert torch.equal(ref, out)


def test_pixart_micro_conditions_bitwise():
    # PixArt-α 1024 (sample_size 128) embeds resolution and aspect ratio; here forced on a tiny model.
    model = build_pixart(use_additional_conditions=True, num_attention_heads=3, cross_attention_dim=24)  # D % 3 == 0
    s = split(model, build_plan(2, 6, 3, 1).groups)
    assert s.segments[0].inputs[-2:] == ("resolution", "aspect_ratio")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 3])
    text, mask = torch.randn(2, 5, 32), torch.ones(2, 5)
    res, ar = torch.tensor([[64.0, 64.0]] * 2), torch.tensor([[1.0]] * 2)
    with torch.no_grad():
        ref = model(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask,
                    added_cond_kwargs={"resolution": res, "aspect_ratio": ar}).sample
        out = run_split(s, {"sample": x, "timestep": t, "encoder_hidden_states": text,
                            "encoder_attention_mask": mask, "resolution": res, "aspect_ratio": ar})
    assert torch.equal(ref, out)


@pytest.mark.parametrize("n_c,b", [(0, 0), (3, 2), (4, 4)])
def test_dit_split_bitwise(n_c, b):
    model = build_dit()
    s = split(model, build_plan(4, 6, n_c, b).groups)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([999, 10, 10]), torch.tensor([1, 2, 10])
    with torch.no_grad():
        ref = model(x, timestep=t, class_labels=y).sample
        out = run_split(s, {"sample": x, "timestep": t, "class_labels": y})
    assert torch.equal(ref, out)


def test_groups_share_weights_not_copies(pixart):
    s = split(pixart, build_plan(4, 6, 3, 2).groups)
    assert s.modules["blocks_03_06"].blocks[0] is pixart.transformer_blocks[3]


def test_groups_must_tile_the_blocks(pixart):
    with pytest.raises(DeltaDiTError, match=r"do not tile the model's 6 blocks"):
        split(pixart, (BlockGroup(0, 0, 3), BlockGroup(1, 4, 6)))
    with pytest.raises(DeltaDiTError, match=r"do not tile"):
        split(pixart, build_plan(4, 28, 21, 2).groups)


def test_unsupported_transformer_named():
    from deltadit.models import spec_for

    with pytest.raises(DeltaDiTError, match=r"transformer \| Linear is not supported.*PixArtTransformer2DModel"):
        spec_for(torch.nn.Linear(2, 2))
