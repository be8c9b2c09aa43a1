"""fused_mlp on the CPU: its autograd function and custom ops (their CPU kernels are plain torch)
against the plain MLP, under torch.compile too, and which MLPs it takes. The cuBLASLt kernels need a
GPU: BENCHMARKS.md records their check against the plain MLP on an H100."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fused_mlp
from model_components import StandardFFN
from model_config import ModelConfig


def _mlp(bias, activation="gelu", n_embd=32, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt2", n_layer=1, n_head=2, n_embd=n_embd, block_size=8, vocab_size=64,
                                  bias=bias, activation=activation)
    return StandardFFN(cfg).to(dtype)


def _outputs_and_grads(run, mlp, x):
    x = x.clone().requires_grad_()
    out = run(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = [x.grad] + [p.grad for p in mlp.parameters()]
    mlp.zero_grad(set_to_none=True)
    return out, grads


@pytest.mark.parametrize("bias", [True, False])
def test_gelu_mlp_equals_the_plain_mlp_and_its_gradients(bias):
    mlp = _mlp(bias)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    expected, expected_grads = _outputs_and_grads(lambda t: mlp.down_proj(F.gelu(mlp.up_proj(t), approximate="tanh")),
                                                  mlp, x)
    out, grads = _outputs_and_grads(lambda t: fused_mlp.gelu_mlp(t, mlp.up_proj, mlp.down_proj), mlp, x)
    torch.testing.assert_close(out, expected)
    assert len(grads) == (5 if bias else 3)
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad, want)


def test_gelu_mlp_compiles_in_one_graph_and_follows_autocast():
    mlp = _mlp(True, dtype=torch.float32)
    x = torch.randn(2, 4, 32)
    compiled = torch.compile(lambda t: fused_mlp.gelu_mlp(t, mlp.up_proj, mlp.down_proj), fullgraph=True,
                             backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_grads = _outputs_and_grads(mlp, mlp, x)
        out, grads = _outputs_and_grads(compiled, mlp, x)
    assert out.dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad, want, rtol=5e-2, atol=5e-2)


def test_parameters_get_their_gradients_from_the_function_in_their_own_dtype():
    """Under autocast the fp32 parameters go into the autograd function itself, which casts them, so
    its backward hands them fp32 gradients from the matmuls: no cast node (and no widening kernel)
    sits between the function and the parameters."""
    mlp = _mlp(True, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_mlp.gelu_mlp(torch.randn(2, 4, 32), mlp.up_proj, mlp.down_proj)
    function = out.grad_fn.next_functions[0][0]
    assert type(function).__name__ == "_GeluMLPBackward"
    fed = [node.variable for node, _ in function.next_functions[1:]]
    assert all(a is b for a, b in zip(fed, (mlp.up_proj.weight, mlp.up_proj.bias, mlp.down_proj.weight,
                                             mlp.down_proj.bias), strict=True))
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in mlp.parameters())


def test_custom_ops_pass_torch_library_opcheck():
    x, w_up, b_up = torch.randn(6, 16), torch.randn(24, 16), torch.randn(24)
    torch.library.opcheck(torch.ops.workbench.gelu_up_projection, (x, w_up, b_up))
    torch.library.opcheck(torch.ops.workbench.gelu_up_projection, (x, w_up, None))
    grad_out, w_down, pre = torch.randn(6, 16), torch.randn(16, 24), torch.randn(6, 24)
    torch.library.opcheck(torch.ops.workbench.gelu_down_projection_grad, (grad_out, w_down, pre))


class _Float8LikeLinear(nn.Linear):
    """Stands for torchao's Float8Linear: a subclass whose matmuls the fused path would bypass."""


def test_supported_only_for_tanh_gelu_plain_linears_in_half_precision():
    assert fused_mlp.supported(_mlp(True), torch.bfloat16)
    assert fused_mlp.supported(_mlp(False), torch.float16)
    assert not fused_mlp.supported(_mlp(True), torch.float32)  # cuBLASLt's GELU epilogues here: bf16/fp16
    assert not fused_mlp.supported(_mlp(True, activation="gelu_exact"), torch.bfloat16)
    assert not fused_mlp.supported(_mlp(True, n_embd=36), torch.bfloat16)  # 36 not a multiple of 8
    swapped = _mlp(True)
    swapped.up_proj = _Float8LikeLinear(32, 128)
    assert not fused_mlp.supported(swapped, torch.bfloat16)


def test_cpu_tensors_take_the_plain_path():
    mlp = _mlp(True, dtype=torch.float32)
    x = torch.randn(2, 4, 32)
    assert not fused_mlp.applies(mlp, x)
    torch.testing.assert_close(mlp(x), mlp.down_proj(F.gelu(mlp.up_proj(x), approximate="tanh")))
