import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.codegen.triton import TritonKernel
from torch._inductor.custom_graph_pass import get_hash_for_files
from torch._inductor.utils import IndentedBuffer

import dependent_launch

WAIT, LAUNCH = TritonKernel.GDC_WAIT, TritonKernel.GDC_LAUNCH
ORIGINAL_FILTER = getattr(TritonKernel._filter_pdl, "__wrapped__", TritonKernel._filter_pdl)


class _Kernel:
    """What Inductor's filter and the wrapper read from a TritonKernel."""
    GDC_WAIT, GDC_LAUNCH = WAIT, LAUNCH

    def __init__(self, launches_with_pdl):
        self.launches_with_pdl = launches_with_pdl

    def _enable_pdl_codegen(self):
        return self.launches_with_pdl


def _filtered(lines, launches_with_pdl=True):
    body = IndentedBuffer()
    for line in lines:
        body.writeline(line)
    dependent_launch.wait_first(ORIGINAL_FILTER)(_Kernel(launches_with_pdl), body)
    return body._lines


def test_a_kernel_that_loads_nothing_waits_before_its_store():
    # Inductor's own placement leaves a zero-fill without any wait
    assert _filtered(["tmp0 = 0.0", "tl.store(out_ptr0 + x0, tmp0, xmask)"]) == [
        WAIT, "tmp0 = 0.0", "tl.store(out_ptr0 + x0, tmp0, xmask)"]


def test_the_wait_moves_before_every_load_and_launch_stays_last():
    lines = ["tmp0 = tl.load(in_ptr0 + x0)", WAIT, "tmp1 = tl.load(in_ptr1 + x0)", WAIT, LAUNCH,
             "tmp2 = tl.load(in_ptr2 + x0)", WAIT, LAUNCH, "tl.store(out_ptr0 + x0, tmp0 + tmp1 + tmp2)"]
    assert _filtered(lines) == [WAIT, "tmp0 = tl.load(in_ptr0 + x0)", "tmp1 = tl.load(in_ptr1 + x0)",
                                "tmp2 = tl.load(in_ptr2 + x0)", LAUNCH, "tl.store(out_ptr0 + x0, tmp0 + tmp1 + tmp2)"]


def test_kernels_launched_without_pdl_are_left_as_inductor_wrote_them():
    lines = ["tmp0 = tl.load(in_ptr0 + x0)", "tl.store(out_ptr0 + x0, tmp0)"]
    assert _filtered(lines, launches_with_pdl=False) == lines


def test_off_where_it_cannot_run_and_a_request_says_why_once():
    assert dependent_launch.enable(None, "cpu", compiled=True) is False
    assert dependent_launch.enable(False, "cuda", compiled=True) is False
    assert torch._inductor.config.triton.enable_pdl is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dependent_launch.enable(True, "cpu", compiled=True) is False
        assert dependent_launch.enable(True, "cpu", compiled=False) is False
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "dependent_launch=True" in messages[0] and "NVIDIA GPU (device is cpu)" in messages[0]
    assert "not compiled" in messages[1]


def test_a_step_without_it_is_not_compiled_with_an_earlier_steps_setting(monkeypatch):
    monkeypatch.setattr(torch._inductor.config.triton, "enable_pdl", False)
    monkeypatch.setattr(dependent_launch, "unavailable_reason", lambda device, compiled: None)  # as on an H100
    monkeypatch.setattr(dependent_launch, "_install_wait_first_rule", lambda: None)
    assert dependent_launch.enable(None, "cuda", compiled=True) is True
    assert torch._inductor.config.triton.enable_pdl is True
    assert dependent_launch.enable(False, "cuda", compiled=True) is False  # the next row of a bench sweep
    assert torch._inductor.config.triton.enable_pdl is False


def test_by_default_only_a_single_process_run_launches_early(monkeypatch):
    monkeypatch.setattr(torch._inductor.config.triton, "enable_pdl", False)
    monkeypatch.setattr(dependent_launch, "unavailable_reason", lambda device, compiled: None)  # as on an H100
    monkeypatch.setattr(dependent_launch, "_install_wait_first_rule", lambda: None)
    assert dependent_launch.enable(None, "cuda:3", compiled=True, world_size=8) is False
    assert torch._inductor.config.triton.enable_pdl is False
    assert dependent_launch.enable(True, "cuda:3", compiled=True, world_size=8) is True


def test_a_custom_pass_of_the_users_is_left_alone(monkeypatch):
    class UsersPass(dependent_launch.custom_graph_pass.CustomGraphPass):
        def __call__(self, graph):
            pass

        def uuid(self):
            return b"users"

    users_pass = UsersPass()
    monkeypatch.setattr(torch._inductor.config, "post_grad_custom_pre_pass", users_pass)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # as on an H100
    assert "post_grad_custom_pre_pass" in dependent_launch.unavailable_reason("cuda", compiled=True)
    assert dependent_launch.enable(None, "cuda", compiled=True) is False
    assert torch._inductor.config.post_grad_custom_pre_pass is users_pass


def test_a_torch_without_inductor_pdl_keeps_it_off_and_its_config_untouched(monkeypatch):
    monkeypatch.setattr(dependent_launch, "_INDUCTOR_SETTING", None)  # as torch 2.6's config, which has no enable_pdl
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # as on an H100
    monkeypatch.delattr(torch._inductor.config.triton, "enable_pdl")
    assert "has no Inductor PDL code generation" in dependent_launch.unavailable_reason("cuda", compiled=True)
    assert dependent_launch.enable(None, "cuda", compiled=True) is False
    assert dependent_launch.enable(False, "cuda", compiled=True) is False
    assert not hasattr(torch._inductor.config.triton, "enable_pdl")


def test_the_rule_is_part_of_inductors_cache_key(monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "post_grad_custom_pre_pass", None)
    monkeypatch.setattr(TritonKernel, "_filter_pdl", ORIGINAL_FILTER)
    monkeypatch.setattr(dependent_launch, "_rule_installed", False)
    dependent_launch._install_wait_first_rule()
    cache_pass = torch._inductor.config.post_grad_custom_pre_pass
    # Inductor hashes the pass's uuid into its FX graph cache keys: this module's own hash
    assert cache_pass.uuid() == get_hash_for_files((dependent_launch.__file__,)) and len(cache_pass.uuid()) >= 16
    assert TritonKernel._filter_pdl.__wrapped__ is ORIGINAL_FILTER
    dependent_launch._install_wait_first_rule()  # a second call does not wrap twice
    assert TritonKernel._filter_pdl.__wrapped__ is ORIGINAL_FILTER


def _kernels_launched_with_pdl(sources):
    """{kernel name: its source} for the Triton kernels Inductor marked for PDL launch."""
    kernels = {}
    for source in sources:
        for chunk in source.split("@triton_heuristics.")[1:]:
            name = re.search(r"def (triton_\w+)\(", chunk)
            if name and "'launch_pdl': True" in chunk:
                kernels[name.group(1)] = chunk[chunk.index("def " + name.group(1)):]
    return kernels


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="PDL code generation needs an NVIDIA GPU of compute capability 9.0+")
def test_every_generated_kernel_waits_before_it_touches_memory(monkeypatch):
    from torch._inductor.utils import run_and_get_code
    monkeypatch.setattr(torch._inductor.config.triton, "enable_pdl", False)
    monkeypatch.setattr(torch._inductor.config, "post_grad_custom_pre_pass", None)
    assert dependent_launch.enable(None, "cuda", compiled=True)
    embedding = torch.randn(512, 64, device="cuda", requires_grad=True)
    tokens = torch.randint(0, 512, (8, 32), device="cuda")

    def step():  # the embedding's backward zero-fills its gradient: a kernel that loads nothing
        hidden = F.layer_norm(F.embedding(tokens, embedding), (64,))
        (hidden @ embedding.T).logsumexp(-1).mean().backward()

    torch._dynamo.reset()
    _, sources = run_and_get_code(torch.compile(step))
    kernels = _kernels_launched_with_pdl(sources)
    assert any("tl.load" not in body for body in kernels.values())  # the zero-fill is among them
    for name, body in kernels.items():
        wait = body.index("gdc_wait()")
        accesses = [m.start() for m in re.finditer(r"tl\.(load|store|atomic_\w+)\(", body)]
        assert accesses and wait < min(accesses), f"{name} touches memory before its wait:\n{body}"
