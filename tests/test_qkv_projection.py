"""The q/k/v projection's gradient gather, run on the CPU by Triton's interpreter (in a subprocess:
TRITON_INTERPRET must be set before the kernel is defined), and built for an H100 (sm_90)."""
import pytest
import torch
from torch import nn

import qkv_projection

pytest.importorskip("triton")


def test_gather_writes_the_gradients_side_by_side_and_their_column_sums(triton_interpreter):
    triton_interpreter("""
        import torch
        import qkv_projection

        qkv_projection.GATHER_TOKENS = 16  # several blocks, the last partly past the tokens (2 x 21 = 42)
        torch.manual_seed(0)
        B, T, H, K, d = 2, 21, 4, 2, 12  # grouped-query heads; d not a power of two
        # laid out (B, heads, T, d) as the attention kernel returns them, seen as (B, T, heads, d)
        grads = [torch.randn(B, heads, T, d).to(torch.bfloat16).transpose(1, 2) for heads in (H, K, K)]
        out, bias_grad = torch.ops.workbench.gather_qkv_gradient(*grads)
        expected = torch.cat([g.reshape(B * T, -1) for g in grads], dim=1)
        assert out.shape == (B * T, (H + 2 * K) * d) and torch.equal(out, expected)
        torch.testing.assert_close(bias_grad.float(), expected.float().sum(0), rtol=1e-2, atol=1e-2)
        print("ok")
    """)


def test_projection_matches_the_plain_linear_and_split_in_values_and_gradients(triton_interpreter):
    triton_interpreter("""
        import torch
        from torch import nn
        import qkv_projection

        qkv_projection.GATHER_TOKENS = 16
        torch.manual_seed(0)
        B, T, C, H, K, d = 2, 20, 32, 4, 2, 8
        linear = nn.Linear(C, (H + 2 * K) * d)
        x = torch.randn(B, T, C, requires_grad=True)
        fused = qkv_projection.project(x, linear, (H, K, K), d)
        plain = linear(x).view(B, T, H + 2 * K, d).split((H, K, K), dim=2)
        upstream = [torch.randn_like(p) for p in plain]
        for a, b in zip(fused, plain):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
        fused_grads = torch.autograd.grad(fused, (x, linear.weight, linear.bias), upstream)
        plain_grads = torch.autograd.grad(plain, (x, linear.weight, linear.bias), upstream)
        for a, b in zip(fused_grads, plain_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        print("ok")
    """)


def test_parameters_get_their_gradients_from_the_function_in_their_own_dtype():
    """Under autocast the fp32 weight and bias go into the autograd function itself, which casts them,
    so no cast node (and no kernel widening bf16 gradients) sits between the function and them."""
    linear = nn.Linear(32, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = qkv_projection.project(torch.randn(2, 4, 32), linear, (4, 2, 2), 8)
    assert q.dtype == torch.bfloat16 and type(q.grad_fn).__name__ == "_QKVProjectionBackward"
    fed = [node.variable for node, _ in q.grad_fn.next_functions[1:]]
    assert fed[0] is linear.weight and fed[1] is linear.bias


def test_applies_only_to_a_plain_biased_linear_on_cuda():
    x = torch.randn(2, 3, 8)
    assert not qkv_projection.applies(nn.Linear(8, 24), x)  # CPU
    if torch.cuda.is_available():
        assert qkv_projection.applies(nn.Linear(8, 24), x.cuda())
        assert not qkv_projection.applies(nn.Linear(8, 24, bias=False), x.cuda())


def test_gather_kernel_builds_for_sm90(build_for_sm90):
    signature = {"source_ptr": "*bf16", "out_ptr": "*bf16", "partial_ptr": "*fp32", "tokens": "i32",
                 "seq_len": "i32", "head_dim": "i32", "stride_b": "i32", "stride_t": "i32", "stride_h": "i32",
                 "stride_d": "i32", "out_width": "i32", "first_column": "i32", "BLOCK_TOKENS": "constexpr",
                 "BLOCK_D": "constexpr"}
    constants = {"BLOCK_TOKENS": qkv_projection.GATHER_TOKENS, "BLOCK_D": 64}
    compiled = build_for_sm90(qkv_projection._gather_kernel, signature, constants,
                              num_warps=qkv_projection.GATHER_WARPS)
    assert "ptx" in compiled.asm
