"""fused_adamw: the Triton kernel's update against torch's AdamW, run on the CPU by Triton's
interpreter (in a subprocess: TRITON_INTERPRET must be set before the kernel is defined), the
fallbacks to torch's step, and the kernel built for an H100 (sm_90)."""
import pytest
import torch

import fused_adamw

# Shared by the interpreter checks: ours and torch's AdamW (plain, grads divided by the clipping
# factor by hand) over four steps with new gradient tensors each step, two groups, sizes that are not
# multiples of BLOCK, one parameter without a gradient, an lr change and a grad_scale from step 2.
TWIN_RUNS = """
import torch
import fused_adamw

fused_adamw.KERNEL_DEVICES = ("cuda", "cpu")
fused_adamw.BLOCK = 64
torch.manual_seed(0)
shapes = [(70, 3), (64, 2), (5,), (64,), (9,)]
start = [torch.randn(s) for s in shapes]

def twins(**options):
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    def groups(params):
        return [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]
    return (ours, fused_adamw.AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.95), **options),
            theirs, torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.9, 0.95), foreach=False, **options))

def step_both(ours, optimizer, theirs, reference, step):
    scale = torch.tensor(1.0 + step) if step >= 2 else None
    for group in (optimizer, reference):
        for g in group.param_groups:
            g["lr"] = 1e-2 if step < 3 else 3e-3
    grads = [torch.randn(s) for s in shapes]
    for i, (a, b, g) in enumerate(zip(ours, theirs, grads)):
        if i == 3:  # no gradient: neither optimizer touches it
            continue
        a.grad = g.clone()
        b.grad = g / scale if scale is not None else g.clone()
    if scale is not None:
        optimizer.grad_scale = scale
    optimizer.step()
    optimizer.__dict__.pop("grad_scale", None)
    reference.step()
    return grads

def assert_same(ours, optimizer, theirs, reference):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert (a in optimizer.state) == (b in reference.state)
        if a in optimizer.state:
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(optimizer.state[a][key], reference.state[b][key], rtol=1e-5, atol=1e-7)
            assert optimizer.state[a]["step"].item() == reference.state[b]["step"].item()
"""


def test_the_kernel_makes_torchs_adamw_update_and_leaves_the_gradients(triton_interpreter):
    triton_interpreter(TWIN_RUNS + """
calls = []
original = fused_adamw._update
fused_adamw._update = lambda *args: calls.append(1) or original(*args)
ours, optimizer, theirs, reference = twins()
for step in range(4):
    grads = step_both(ours, optimizer, theirs, reference, step)
    assert all(torch.equal(a.grad, g) for i, (a, g) in enumerate(zip(ours, grads)) if i != 3)  # not divided back
assert_same(ours, optimizer, theirs, reference)
assert len(calls) == 8  # two groups, four steps: the kernel ran every time
assert torch.equal(ours[3], start[3]) and ours[3] not in optimizer.state
print("ok")
""")


def test_state_dicts_load_into_either_optimizer_and_training_goes_on(triton_interpreter):
    triton_interpreter(TWIN_RUNS + """
ours, optimizer, theirs, reference = twins()
for step in range(2):
    step_both(ours, optimizer, theirs, reference, step)
# swap the states: each optimizer goes on from the other's
ours_state, their_state = optimizer.state_dict(), reference.state_dict()
optimizer.load_state_dict(their_state)
reference.load_state_dict(ours_state)
assert optimizer.state[ours[0]]["step"].dtype == torch.float32
for step in range(2, 4):
    step_both(ours, optimizer, theirs, reference, step)
assert_same(ours, optimizer, theirs, reference)
print("ok")
""")


def _twin_parameters(seed=0):
    torch.manual_seed(seed)
    start = [torch.randn(7, 3), torch.randn(4)]
    return [torch.nn.Parameter(t.clone()) for t in start], [torch.nn.Parameter(t.clone()) for t in start]


@pytest.mark.parametrize("case", ["device without the kernel", "found_inf", "amsgrad", "closure"])
def test_where_the_kernel_does_not_apply_torchs_fused_step_runs(case, monkeypatch):
    """On the CPU (not in KERNEL_DEVICES), with GradScaler's found_inf, with amsgrad or a closure, the
    step is torch's own."""
    monkeypatch.setattr(fused_adamw, "_update", lambda *args: pytest.fail("the kernel ran"))
    if case != "device without the kernel":
        monkeypatch.setattr(fused_adamw, "KERNEL_DEVICES", ("cuda", "cpu"))
    ours, theirs = _twin_parameters()
    options = dict(lr=0.1, amsgrad=case == "amsgrad")
    optimizer = fused_adamw.AdamW(ours, **options)
    reference = torch.optim.AdamW(theirs, fused=True, **options)
    for a, b in zip(ours, theirs):
        a.grad = torch.ones_like(a)
        b.grad = torch.ones_like(b)
    if case == "found_inf":
        optimizer.found_inf = reference.found_inf = torch.zeros(())
    closure = (lambda: torch.tensor(1.0)) if case == "closure" else None
    assert optimizer.step(closure) == reference.step(closure)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_zero1_rebuilds_it_with_the_same_settings():
    """distributed.shard_optimizer passes the defaults that the class's __init__ names."""
    import inspect
    optimizer = fused_adamw.AdamW(_twin_parameters()[0], lr=3e-4, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.2)
    accepted = inspect.signature(type(optimizer).__init__).parameters
    settings = {key: value for key, value in optimizer.defaults.items() if key in accepted}
    assert settings["betas"] == (0.9, 0.95) and settings["eps"] == 1e-6 and settings["weight_decay"] == 0.2
    rebuilt = fused_adamw.AdamW(_twin_parameters()[0], **settings)
    assert rebuilt.defaults == optimizer.defaults


@pytest.mark.parametrize("has_grad_scale", [False, True])
def test_the_kernel_builds_for_sm90(has_grad_scale, build_for_sm90):
    pytest.importorskip("triton")
    signature = {"programs_ptr": "*i64", "addresses_ptr": "*i64", "lr": "fp32", "weight_decay": "fp32",
                 "beta1": "fp32", "beta2": "fp32", "eps": "fp32", "log2_beta1": "fp32", "log2_beta2": "fp32",
                 "grad_scale_ptr": "*fp32", "HAS_GRAD_SCALE": "constexpr", "COLUMNS": "constexpr",
                 "BLOCK": "constexpr"}
    constants = {"HAS_GRAD_SCALE": has_grad_scale, "COLUMNS": 6, "BLOCK": fused_adamw.BLOCK}
    compiled = build_for_sm90(fused_adamw._adamw_kernel, signature, constants, num_warps=fused_adamw.WARPS)
    assert "ld.global" in compiled.asm["ptx"]


def test_on_a_gpu_it_matches_torchs_fused_adamw():
    """The real kernel on CUDA against torch's fused step (clipping factor divided in by hand)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    start = [torch.randn(s, device="cuda") for s in [(3000, 70), (2304,), (1,)]]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    optimizer = fused_adamw.AdamW(ours, lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, fused=True)
    for step in range(3):
        scale = torch.tensor(2.0 + step, device="cuda")
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad / scale
        optimizer.grad_scale = scale
        optimizer.step()
        reference.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(optimizer.state[a]["exp_avg_sq"], reference.state[b]["exp_avg_sq"])
