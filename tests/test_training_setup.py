import warnings

import pytest
import torch
import torch.nn as nn

from distributed import DistInfo
from linear_cross_entropy import LossSettings
from model_config import ConfigError, ModelConfig
from train_config import Config, TrainConfig
from training_setup import build_step_parts


def _parts(dtype="float32", **train_options):
    cfg = ModelConfig.from_preset("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    config = Config(cfg, TrainConfig(batch_size=2, device="cpu", compile=False, **train_options))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = build_step_parts(config, "cpu", dtype, DistInfo())
    return parts, [str(w.message) for w in caught]


def test_fp8_falls_back_on_cpu_with_one_warning():
    parts, messages = _parts(fp8=True)
    fp8_messages = [m for m in messages if "fp8" in m]
    assert len(fp8_messages) == 1 and fp8_messages[0].startswith("fp8=True ignored")
    assert "compute capability 8.9+" in fp8_messages[0]
    assert all(type(m) is nn.Linear for m in parts.model.modules() if isinstance(m, nn.Linear))


def test_fp8_lm_head_falls_back_on_cpu_and_the_step_keeps_the_fused_loss():
    parts, messages = _parts(fp8_lm_head=True, loss_chunk_rows=16)
    assert len([m for m in messages if m.startswith("fp8_lm_head=True ignored")]) == 1
    assert parts.loss_settings == LossSettings(chunk_rows=16, fp8=False)
    assert _parts()[0].loss_settings == LossSettings(chunk_rows=32768, fp8=False)  # the default, no warning


def test_the_float8_lm_head_is_the_default_where_it_runs(monkeypatch):
    """Checked with a pretended GPU of compute capability 8.9+: the default takes the float8 head for
    bf16 steps and leaves it, silently, where it cannot or should not run."""
    import training_setup
    cfg = ModelConfig.from_preset("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    monkeypatch.setattr(training_setup, "_float8_unavailable", lambda device: None)

    def settings(dtype="bfloat16", **options):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chosen = training_setup.loss_settings_for(TrainConfig(batch_size=2, **options), cfg, "cuda", dtype)
        return chosen, [str(w.message) for w in caught]

    assert settings() == (LossSettings(chunk_rows=32768, fp8=True), [])
    assert settings("float32") == (LossSettings(chunk_rows=32768, fp8=False), [])
    assert settings(loss_chunk_rows=0) == (LossSettings(chunk_rows=0, fp8=False), [])
    assert settings(loss_chunk_rows=24) == (LossSettings(chunk_rows=24, fp8=False), [])  # not a multiple of 16
    assert settings(fp8_lm_head=False) == (LossSettings(chunk_rows=32768, fp8=False), [])
    assert settings("float32", fp8_lm_head=True) == (LossSettings(chunk_rows=32768, fp8=True), [])
    chosen, messages = settings(fp8_lm_head=True, loss_chunk_rows=24)
    assert chosen.fp8 is False and len(messages) == 1 and "loss_chunk_rows=24 not a multiple of 16" in messages[0]


def test_the_residual_stream_follows_the_training_dtype_unless_set_to_float32():
    assert _parts("bfloat16")[0].model.residual_dtype == torch.bfloat16
    assert _parts("bfloat16", residual_dtype="float32")[0].model.residual_dtype == torch.float32
    assert _parts("float32")[0].model.residual_dtype == torch.float32


@pytest.mark.parametrize("options, words", [
    (dict(fp8_lm_head=True, loss_chunk_rows=0), ["fp8_lm_head=True", "loss_chunk_rows=0"]),
    (dict(loss_chunk_rows=-1), ["loss_chunk_rows=-1", "0 for the plain"]),
    (dict(residual_dtype="bfloat16"), ["residual_dtype='bfloat16'", "auto, float32"]),
])
def test_speed_options_are_checked(options, words):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**options)
    assert all(word in str(error.value) for word in words)


def test_cuda_graphs_refuse_gradient_accumulation_with_a_clear_error():
    from training_setup import accumulation_for

    graphs = TrainConfig(batch_size=2, compile_mode="reduce-overhead", gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match=r"compile_mode='reduce-overhead'.*over 2 micro-steps.*compile_mode='default'"):
        accumulation_for(graphs, 16, world_size=1)
    by_tokens = TrainConfig(batch_size=2, compile_mode="reduce-overhead", total_batch_size=2 * 16 * 4)
    with pytest.raises(ConfigError, match="over 4 micro-steps"):
        accumulation_for(by_tokens, 16, world_size=1)
    autotuned = TrainConfig(batch_size=2, compile_mode="max-autotune", gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match=r"compile_mode='max-autotune' \(CUDA graphs\)"):
        accumulation_for(autotuned, 16, world_size=1)
    assert accumulation_for(TrainConfig(batch_size=2, compile_mode="reduce-overhead"), 16, world_size=1) == 1
    assert accumulation_for(TrainConfig(batch_size=2, gradient_accumulation_steps=2), 16, world_size=1) == 2
    uncompiled = TrainConfig(batch_size=2, compile=False, compile_mode="reduce-overhead", gradient_accumulation_steps=2)
    assert accumulation_for(uncompiled, 16, world_size=1) == 2


AUTO = dict(compile_mode="auto")


@pytest.mark.parametrize("options, device, world_size, accumulation, expected", [
    (AUTO, "cuda", 1, 1, "reduce-overhead"),  # CUDA graphs where they were measured to work
    (AUTO, "cuda:1", 1, 1, "reduce-overhead"),
    (AUTO, "cpu", 1, 1, "default"),
    (AUTO, "cuda", 2, 1, "default"),  # DDP / FSDP
    (AUTO, "cuda", 1, 2, "default"),  # graphs cannot accumulate gradients
    (dict(AUTO, fp8=True), "cuda", 1, 1, "default"),
    (dict(AUTO, activation_checkpointing="full"), "cuda", 1, 1, "default"),
    (dict(), "cuda", 1, 1, "reduce-overhead"),  # auto is the default
    (dict(compile_mode="default"), "cuda", 1, 1, "default"),  # an explicit mode is kept as it is
    (dict(compile_mode="reduce-overhead"), "cpu", 1, 1, "reduce-overhead"),
    (dict(compile_mode="max-autotune"), "cuda", 2, 4, "max-autotune"),
])
def test_compile_mode_auto_takes_cuda_graphs_only_where_they_work(options, device, world_size, accumulation,
                                                                   expected):
    from training_setup import compile_mode_for
    assert compile_mode_for(TrainConfig(**options), device, world_size, accumulation) == expected


def test_compile_mode_auto_leaves_rocm_without_graphs(monkeypatch):
    from training_setup import compile_mode_for
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")  # ROCm's torch names its GPUs cuda too
    assert compile_mode_for(TrainConfig(), "cuda", 1, 1) == "default"


def test_step_parts_say_which_compile_mode_runs(monkeypatch):
    import distributed
    passed = []
    original = distributed.wrap_model

    def spy(model, info, strategy, compile_model, param_dtype, reshard_after_forward=True, compile_mode="default"):
        passed.append(compile_mode)
        return original(model, info, strategy, False, param_dtype, reshard_after_forward, compile_mode)

    monkeypatch.setattr(distributed, "wrap_model", spy)
    assert _parts()[0].compile_mode is None  # compile=False
    cfg = ModelConfig.from_preset("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    parts = build_step_parts(Config(cfg, TrainConfig(batch_size=2, device="cpu", compile=True, compile_mode="auto")),
                             "cpu", "float32", DistInfo())
    assert parts.compile_mode == "default" and passed[-1] == "default"  # auto on the CPU
    assert "chunks of 32768 tokens" in parts.loss_settings.describe()
    assert "plain cross-entropy" in LossSettings().describe()


def test_step_parts_reserve_the_cublaslt_workspace_on_the_step_device(monkeypatch):
    import cublaslt
    devices = []
    monkeypatch.setattr(cublaslt, "reserve_workspace", devices.append)
    _parts()
    assert devices == ["cpu"]


def test_step_parts_ask_for_dependent_launch_with_the_compile_setting(monkeypatch):
    import dependent_launch
    import distributed
    original = distributed.wrap_model
    monkeypatch.setattr(distributed, "wrap_model", lambda model, info, strategy, compile_model, *rest: original(
        model, info, strategy, False, *rest))  # what is asked for is the point here, not a compiled model
    asked = []
    monkeypatch.setattr(dependent_launch, "enable", lambda requested, device, compiled, world_size: asked.append(
        (requested, device, compiled, world_size)) or compiled)
    assert _parts()[0].dependent_launch is False and asked[-1] == (None, "cpu", False, 1)  # compile=False
    cfg = ModelConfig.from_preset("gpt2", n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    parts = build_step_parts(Config(cfg, TrainConfig(batch_size=2, device="cpu", compile=True, dependent_launch=True)),
                             "cpu", "float32", DistInfo())
    assert parts.dependent_launch is True and asked[-1] == (True, "cpu", True, 1)


@pytest.mark.parametrize("rows, sms, compiled, device, expected", [
    (32768, 132, True, "cuda", 128),  # GPT-2 at batch 32 on an H100: 248 rows per SM
    (16384, 132, True, "cuda:1", 64),
    (2048, 132, True, "cuda", 16),  # never below Inductor's own floor
    (10 ** 6, 132, True, "cuda", 128),  # nor above its ceiling
    (32768, 132, False, "cuda", None),  # not compiled: Inductor's own choice
    (32768, 132, True, "cpu", None),
])
def test_norm_gradient_split_is_a_power_of_two_near_one_program_per_sm(rows, sms, compiled, device, expected,
                                                                      monkeypatch):
    from torch._inductor import config as inductor_config

    from training_setup import set_norm_gradient_split
    if not hasattr(inductor_config.triton, "mix_order_reduction_split_size"):
        pytest.skip("this torch has no mix-order reduction setting")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"multi_processor_count": sms}))
    monkeypatch.setattr(inductor_config.triton, "mix_order_reduction_split_size", 7)
    set_norm_gradient_split(rows, device, compiled)
    assert inductor_config.triton.mix_order_reduction_split_size == expected
