"""The Triton kernels of the fused loss, run on the CPU by Triton's interpreter (in a subprocess:
TRITON_INTERPRET must be set before the kernels are defined), and built for an H100 (sm_90) the way
torch.compile builds them."""
import pytest

pytest.importorskip("triton")


def test_transpose_kernel_copies_every_element_to_its_transposed_place(triton_interpreter):
    triton_interpreter("""
        import torch
        import loss_kernels

        loss_kernels.TILE = 16  # several tiles each way, the last ones partly past the matrix
        matrix = torch.randint(0, 255, (70, 130), dtype=torch.uint8).view(torch.float8_e5m2)
        transposed = loss_kernels.transpose(matrix)
        assert transposed.dtype == torch.float8_e5m2 and transposed.shape == (130, 70)
        assert torch.equal(transposed.view(torch.uint8), matrix.T.contiguous().view(torch.uint8))
        print("ok")
    """)


def test_loss_kernel_gives_row_losses_and_softmax_minus_one_hot(triton_interpreter):
    triton_interpreter("""
        import torch
        import loss_kernels

        loss_kernels.LOSS_ROWS, loss_kernels.LOSS_VOCAB = 2, 32  # several tiles, the last partly past the row
        torch.manual_seed(0)
        logits = (4 * torch.randn(7, 100)).to(torch.bfloat16)
        targets = torch.randint(0, 100, (7,))
        targets[2] = -1  # ignored
        row_losses, grad = loss_kernels.loss_and_logit_gradient(logits, targets, -1, 3.0, False)
        x, valid = logits.double(), targets != -1
        expected = torch.nn.functional.cross_entropy(x, targets, ignore_index=-1, reduction="none")
        torch.testing.assert_close(row_losses.double(), expected, rtol=1e-5, atol=1e-5)
        one_hot = torch.nn.functional.one_hot(targets.clamp(min=0), 100)
        expected_grad = 3 * (torch.softmax(x, 1) - one_hot) * valid[:, None]
        assert grad.dtype == torch.bfloat16 and torch.all(grad[2] == 0)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-2, atol=1e-2)
        # float8: the interpreter's own e5m2 rounding is not the GPU's, so only the shape of the result here
        row_losses8, grad8 = loss_kernels.loss_and_logit_gradient(logits, targets, -1, 2.0 ** 15, True)
        assert grad8.dtype == torch.float8_e5m2 and torch.equal(row_losses8, row_losses)
        targets_hot = torch.nn.functional.one_hot(targets.clamp(min=0), 100).bool() & valid[:, None]
        assert torch.equal(grad8.float() < 0, targets_hot) and torch.all(grad8[2].float() == 0)
        print("ok")
    """)


@pytest.mark.parametrize("grad_type, fp8", [("*bf16", False), ("*u8", True), ("*fp8e5", True)])
def test_loss_kernel_builds_for_sm90_with_the_argument_types_inductor_passes(grad_type, fp8, build_for_sm90):
    """torch.compile passes the Python float grad_scale as fp64 and the float8 buffer as bytes or
    float8; an fp64 gradient has no conversion to float8, so that build failed before the cast."""
    import loss_kernels

    signature = {"logits_ptr": "*bf16", "targets_ptr": "*i64", "row_loss_ptr": "*fp32", "grad_ptr": grad_type,
                 "rows": "i32", "vocab": "i32", "grad_scale": "fp64", "ignore_index": "i32",
                 "BLOCK_ROWS": "constexpr", "BLOCK_VOCAB": "constexpr", "FP8": "constexpr"}
    constants = {"BLOCK_ROWS": loss_kernels.LOSS_ROWS, "BLOCK_VOCAB": loss_kernels.LOSS_VOCAB, "FP8": fp8}
    compiled = build_for_sm90(loss_kernels._loss_kernel, signature, constants, num_warps=8)
    assert "ptx" in compiled.asm
