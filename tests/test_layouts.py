"""Skip connections kept channels_last for a compiled UNet (harness/layouts.py)."""

import pytest
import torch

from harness.layouts import OP, channels_last_copy, channels_last_skips


@pytest.fixture(scope="module")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    from harness.tiny import TINY_UNET

    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).eval().requires_grad_(False)


def _inputs(unet):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, unet.config.in_channels, 16, 16, generator=g)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor(10), ctx


def _up_resnets(unet) -> int:
    return sum(len(block.resnets) for block in unet.up_blocks)


def test_the_copy_is_channels_last_equal_and_never_an_alias():
    copy = channels_last_copy()
    assert channels_last_copy() is copy  # registered once per process
    x = torch.randn(2, 6, 5, 3)
    for source in (x, x.contiguous(memory_format=torch.channels_last)):
        y = copy(source)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, source)
        assert y.data_ptr() != source.data_ptr()


def test_hooks_on_every_up_block_resnet_change_no_value(tiny_unet):
    x, t, ctx = _inputs(tiny_unet)
    with torch.no_grad():
        plain = tiny_unet(x, t, encoder_hidden_states=ctx).sample
    seen = []
    hooks = channels_last_skips(tiny_unet, when=lambda inp: seen.append(inp.shape) or True)
    try:
        assert len(hooks) == _up_resnets(tiny_unet) > 0
        with torch.no_grad():
            hooked = tiny_unet(x, t, encoder_hidden_states=ctx).sample
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == len(hooks)  # each resnet's input went through the copy, once
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)


def _traced_ops(unet, hooks_when):
    """The ops torch.compile's graph holds with the hooks installed (a recording backend: no code generated)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    hooks = channels_last_skips(unet, **({} if hooks_when is None else {"when": hooks_when}))
    torch._dynamo.reset()
    try:
        x, t, ctx = _inputs(unet)
        with torch.no_grad():
            torch.compile(unet, backend=record)(x, t, encoder_hidden_states=ctx)
    finally:
        for hook in hooks:
            hook.remove()
        torch._dynamo.reset()
    return [str(node.target) for gm in graphs for node in gm.graph.nodes]


def test_the_compiled_graph_holds_the_copy_where_the_hooks_act(tiny_unet):
    ops = _traced_ops(tiny_unet, hooks_when=lambda inp: True)
    assert sum(OP.replace("::", ".") in op for op in ops) == _up_resnets(tiny_unet)


def test_off_cuda_the_hooks_leave_the_graph_alone(tiny_unet):
    assert not any(OP.replace("::", ".") in op for op in _traced_ops(tiny_unet, hooks_when=None))


@pytest.mark.parametrize("speedup", ["compile", "cudagraphs"])
def test_the_runner_hooks_the_unet_it_compiles(tiny_ref, speedup):
    from harness.worker import Tuning, _loader

    pipe = _loader(Tuning(speedups=(speedup,)))(tiny_ref, "txt2img", device=None)
    unet = getattr(pipe.unet, "_orig_mod", None)
    assert unet is not None  # compiled
    assert all(len(r._forward_pre_hooks) == 1 for block in unet.up_blocks for r in block.resnets)
    plain = _loader(Tuning())(tiny_ref, "txt2img", device=None)
    assert not any(r._forward_pre_hooks for block in plain.unet.up_blocks for r in block.resnets)
