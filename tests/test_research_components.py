"""The research components: reciprocal attention, MLA, the reciprocal MLP, kv pruning, delayed
activation, their FLOPs, KV caches and the V0-V6 ablation ladder."""
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ablate
from conftest import REPO_ROOT, tiny_ablation_args
from hf_interop import check_exportable
from model_builder import build_model
from model_components import KVCache, _rotate
from model_config import ConfigError, ModelConfig

TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=96)


def _block_input(cfg, batch=2, seq=12, dtype=torch.float64):
    torch.manual_seed(1)
    return torch.randn(batch, seq, cfg.n_embd, dtype=dtype)


def _causal_softmax(scores):
    T = scores.shape[-1]
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


# ---------------------------------------------------------------- reciprocal attention

@pytest.mark.parametrize("backend", ["sdpa", "manual"])
@pytest.mark.parametrize("preset,options", [("gpt2", {}), ("gpt2", {"ra_self_restart": True}),
                                            ("team", {"ra_self_restart": True})])
def test_fused_reciprocal_attention_equals_explicit_transposed_scores(backend, preset, options):
    cfg = ModelConfig.from_preset(preset, **TINY, attention_type="reciprocal", ra_rank=4, attention_backend=backend,
                                  **options)
    model = build_model(cfg).double()
    attn, position = model.blocks[0].attn, model.position
    with torch.no_grad():
        attn.std_gate.uniform_(-1, 1), attn.rec_gate.uniform_(-1, 1)
        if attn.restart is not None:
            attn.restart.uniform_(-2, 2)
    x = _block_input(cfg)
    B, T, _ = x.shape
    positions = torch.arange(T)
    H, K, hd, r = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.ra_rank
    q, k, v = attn.qkv_proj(x).split([H * hd, K * hd, K * hd], dim=-1)
    q = attn.q_norm(q.view(B, T, H, hd)).transpose(1, 2)
    k = attn.k_norm(k.view(B, T, K, hd)).transpose(1, 2)
    v = v.view(B, T, K, hd).transpose(1, 2).repeat_interleave(H // K, dim=1)
    q, k = position.rotate(q, k, positions)
    k = k.repeat_interleave(H // K, dim=1)
    w = torch.softmax(torch.stack((attn.std_gate, attn.rec_gate)), dim=0).view(2, 1, H, 1, 1)
    standard = q[..., :hd - r] @ k[..., :hd - r].transpose(-2, -1)  # Q_std K_std^T
    reciprocal = (q[..., hd - r:] @ k[..., hd - r:].transpose(-2, -1)).transpose(-2, -1)  # (Q_low K_low^T)^T
    y = _causal_softmax((w[0] * standard + w[1] * reciprocal) / math.sqrt(hd)) @ v
    if attn.restart is not None:
        a = 0.5 * torch.sigmoid(attn.restart).view(1, H, 1, 1)
        y = (1 - a) * y + a * v
    expected = attn.out_proj(y.transpose(1, 2).reshape(B, T, -1))
    torch.testing.assert_close(attn(x, position, positions), expected)


def test_self_restart_weight_stays_in_zero_to_half_and_gates_start_geometric():
    cfg = ModelConfig.from_preset("gpt2", **TINY, attention_type="reciprocal", ra_rank=4, ra_self_restart=True)
    attn = build_model(cfg).blocks[0].attn
    w_std, w_rec = attn.gate_weights()
    torch.testing.assert_close(w_std, torch.full((4,), 12 / 16))
    torch.testing.assert_close(w_rec, torch.full((4,), 4 / 16))
    with torch.no_grad():
        attn.restart.copy_(torch.tensor([-1e4, 0.0, 3.0, 1e4]))
    a = 0.5 * torch.sigmoid(attn.restart)
    assert a.min() >= 0 and a.max() <= 0.5 and a[1] == 0.25


# ---------------------------------------------------------------- MLA

@pytest.mark.parametrize("backend", ["sdpa", "manual"])
@pytest.mark.parametrize("preset,n_kv_head", [("gpt2", 4), ("llama", 4), ("llama", 2)])
def test_mla_equals_an_explicit_per_head_computation(backend, preset, n_kv_head):
    cfg = ModelConfig.from_preset(preset, **TINY, attention_type="mla", kv_latent_dim=24, n_kv_head=n_kv_head,
                                  attention_backend=backend)
    model = build_model(cfg).double()
    attn = model.blocks[0].attn
    x = _block_input(cfg)
    B, T, _ = x.shape
    H, hd, rd, L = cfg.n_head, cfg.head_dim, cfg.mla_rope_dim, cfg.kv_latent_dim
    assert rd == (8 if preset == "llama" else 0)
    latent_and_rope = attn.kv_down_proj(x)
    latent, k_rope = attn.kv_norm(latent_and_rope[..., :L]), latent_and_rope[..., L:]
    up = attn.kv_up_proj(latent)  # (B, T, 2 * n_kv_head * hd): keys of every kv head, then values
    query = attn.q_proj(x).view(B, T, H, hd + rd)
    heads = []
    for h in range(H):
        g = h // (H // n_kv_head)  # the kv head this query head shares
        k_nope, v = up[..., g * hd:(g + 1) * hd], up[..., (n_kv_head + g) * hd:(n_kv_head + g + 1) * hd]
        q_nope, q_rope = query[:, :, h, :hd], query[:, :, h, hd:]
        scores = q_nope @ k_nope.transpose(-2, -1)
        if rd:
            cos, sin = attn.cos[:T].double(), attn.sin[:T].double()
            scores = scores + _rotate(q_rope, cos, sin) @ _rotate(k_rope, cos, sin).transpose(-2, -1)
        heads.append(_causal_softmax(scores / math.sqrt(hd + rd)) @ v)
    expected = attn.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x, model.position, torch.arange(T)), expected)


def test_mla_caches_only_the_latent_and_the_rope_key():
    cfg = ModelConfig.from_preset("llama", **TINY, attention_type="mla", kv_latent_dim=24)
    model = build_model(cfg).eval()
    caches = [KVCache() for _ in model.blocks]
    model(torch.randint(0, 96, (2, 7)), kv_caches=caches)
    assert caches[0].k.shape == (2, 1, 7, 24) and caches[0].v.shape == (2, 1, 7, cfg.mla_rope_dim)


# ---------------------------------------------------------------- reciprocal MLP

def test_rmlp_without_mixer_and_gates_is_a_standard_mlp_split_in_two():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("gpt2", **TINY, ffn_type="rmlp", rmlp_rank=48)
    ffn = build_model(cfg).blocks[0].ffn.double()
    x = _block_input(cfg)
    up = torch.cat((ffn.up_proj.weight, ffn.rec_up_proj.weight)), torch.cat((ffn.up_proj.bias, ffn.rec_up_proj.bias))
    expected = ffn.down_proj(F.gelu(F.linear(x, *up), approximate="tanh"))
    torch.testing.assert_close(ffn(x, torch.randn_like(x)), expected)


def test_rmlp_mixer_and_gates_follow_their_formula_and_learn():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("llama", **TINY, ffn_type="rmlp", rmlp_rank=48, rmlp_mixer=True, rmlp_gates=True)
    ffn = build_model(cfg).blocks[0].ffn.double()
    with torch.no_grad():
        ffn.mixer.fill_(0.3), ffn.gate_std.fill_(0.7), ffn.gate_rec.fill_(1.9)
    x, attention_output = _block_input(cfg), torch.randn(2, 12, 64, dtype=torch.float64)
    h_std = F.silu(ffn.up_proj(x))
    h_rec = F.silu(ffn.rec_up_proj(x + 0.3 * attention_output))
    expected = ffn.down_proj(torch.cat((0.7 * h_std, 1.9 * h_rec), dim=-1))
    out = ffn(x, attention_output)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (ffn.mixer, ffn.gate_std, ffn.gate_rec))
    assert ffn.down_proj.weight.shape == (64, cfg.ffn_hidden_size)


# ---------------------------------------------------------------- delayed activation

def test_delayed_reciprocal_parts_switch_on_at_their_step():
    cfg = ModelConfig.from_preset("gpt2", **TINY, attention_type="reciprocal", ra_rank=4, ffn_type="rmlp",
                                  rmlp_rank=32, ra_delay_steps=3)
    torch.manual_seed(0)
    model = build_model(cfg)
    idx = torch.randint(0, 96, (2, 16))
    model.set_training_step(0)
    assert all(m.reciprocal_on.item() == 0 for m in (model.blocks[0].attn, model.blocks[1].ffn))
    _, loss = model(idx, idx)
    loss.backward()
    # while off, no gradient reaches the reciprocal parts, and they do not change the output:
    # rmlp's reciprocal projection, and the rows of q and k that make Q_low and K_low (4 of 16 per head)
    low_rank_rows = torch.arange(2 * 64).view(8, 16)[:, 12:].flatten()  # the 4 query heads, then the 4 key heads
    qkv = model.blocks[0].attn.qkv_proj.weight
    assert model.blocks[0].ffn.rec_up_proj.weight.grad.abs().sum() == 0
    assert qkv.grad[low_rank_rows].abs().sum() == 0 and qkv.grad.abs().sum() > 0
    with torch.no_grad():
        model.blocks[0].ffn.rec_up_proj.weight.normal_()
        qkv[low_rank_rows] = torch.randn(len(low_rank_rows), 64)
    torch.testing.assert_close(model(idx, idx)[1], loss)
    model.set_training_step(3)
    assert model.blocks[0].attn.reciprocal_on.item() == 1 and model.blocks[1].ffn.reciprocal_on.item() == 1
    assert not torch.allclose(model(idx, idx)[1], loss)


def test_switching_the_delay_does_not_recompile():
    cfg = ModelConfig.from_preset("gpt2", **TINY, attention_type="reciprocal", ra_rank=4, ra_delay_steps=2)
    model = build_model(cfg)
    compiled_graphs = []

    def counting_backend(graph, example_inputs):
        compiled_graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting_backend)
    idx = torch.randint(0, 96, (2, 16))
    outputs = []
    for step in range(4):
        model.set_training_step(step)
        outputs.append(compiled(idx)[0])
    assert len(compiled_graphs) == 1
    torch.testing.assert_close(outputs[0], outputs[1])
    assert not torch.allclose(outputs[1], outputs[2])  # the reciprocal part is on from step 2
    torch._dynamo.reset()


# ---------------------------------------------------------------- KV caches

@pytest.mark.parametrize("preset,options", [
    ("gpt2", {}), ("team", {}), ("gpt2", {"attention_type": "mla"}), ("llama", {"attention_type": "mla"}),
    ("team", {"attention_type": "mla"}), ("gpt2", {"attention_type": "reciprocal", "ra_self_restart": True}),
    ("team", {"attention_type": "reciprocal", "ffn_type": "rmlp", "rmlp_mixer": True, "rmlp_gates": True}),
])
def test_incremental_decoding_with_the_cache_equals_the_full_forward(preset, options):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset(preset, **TINY, **options)).eval()
    idx = torch.randint(0, 96, (2, 20))
    full, _ = model(idx)
    caches = [KVCache() for _ in model.blocks]
    steps = [model(idx[:, :8], kv_caches=caches)[0]]  # prefill, then one token at a time
    steps += [model(idx[:, t:t + 1], kv_caches=caches, start_pos=t)[0] for t in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- kv pruning

def _pruning_model(**options):
    cfg = ModelConfig.from_preset("gpt2", **TINY, kv_pruning="fixed", kv_keep_ratio=0.25, kv_keep_recent=3, **options)
    torch.manual_seed(0)
    return build_model(cfg)


def test_selection_keeps_exactly_the_expected_keys_including_the_recent_ones():
    pruning = _pruning_model().blocks[0].attn.kv_pruning
    scores = torch.tensor([[[9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]])
    keep = pruning.keep_count(12)
    assert keep == 3 and pruning.keep_count(20) == 5 and pruning.keep_count(2) == 2
    assert pruning.select(scores, keep).tolist() == [[[9, 10, 11]]]  # only the recent ones fit in 3
    assert pruning.select(scores, 6).tolist() == [[[0, 2, 4, 9, 10, 11]]]  # the best older ones join them


def test_training_forward_attends_to_the_kept_keys_only():
    model = _pruning_model(attention_backend="manual")
    attn = model.blocks[0].attn
    seen = []
    attn.attend = lambda q, k, v, causal, dropout_p, mask=None: seen.append(mask) or q
    T = 32
    attn(torch.randn(2, T, 64), model.position, torch.arange(T))
    allowed = torch.isfinite(seen[0])  # (B, H, T, S)
    kept_keys = allowed[:, :, -1, :]  # the last query sees every kept key and itself
    assert (kept_keys.sum(-1) == attn.kv_pruning.keep_count(T)).all()  # ceil(0.25 * 32) = 8
    assert kept_keys[..., -3:].all()  # the 3 most recent are always kept
    diagonal = allowed.diagonal(dim1=-2, dim2=-1)
    assert diagonal.all() and not allowed.triu(1).any()  # every query sees itself, never the future


def test_keeping_every_key_is_plain_attention():
    torch.manual_seed(0)
    plain = build_model(ModelConfig.from_preset("gpt2", **TINY))
    torch.manual_seed(0)
    pruned = build_model(ModelConfig.from_preset("gpt2", **TINY, kv_pruning="fixed", kv_keep_ratio=1.0,
                                                 kv_keep_recent=2))
    idx = torch.randint(0, 96, (2, 32))
    torch.testing.assert_close(pruned(idx)[0], plain(idx)[0])


@pytest.mark.parametrize("values_only", [False, True])
def test_pruned_cache_shrinks_to_the_keep_ratio(values_only):
    model = _pruning_model(kv_prune_values_only=values_only).eval()
    caches = [KVCache() for _ in model.blocks]
    idx = torch.randint(0, 96, (2, 30))
    model(idx[:, :10], kv_caches=caches)
    for t in range(10, 30):
        logits, _ = model(idx[:, t:t + 1], kv_caches=caches, start_pos=t)
        kept = math.ceil(0.25 * (t + 1))
        assert caches[0].v.shape[2] == max(3, kept)
        assert caches[0].k.shape[2] == (t + 1 if values_only else max(3, kept))
    assert torch.isfinite(logits).all()
    assert model.generate(idx[:, :5], 20, temperature=0).shape == (2, 25)


def test_learned_keep_ratio_gets_a_gradient():
    model = build_model(ModelConfig.from_preset("gpt2", **TINY, kv_pruning="learned", kv_keep_ratio=0.25,
                                                kv_keep_recent=3))
    idx = torch.randint(0, 96, (2, 32))
    model(idx, idx)[1].backward()
    ratio = model.blocks[0].attn.kv_pruning
    assert ratio.keep_ratio().item() == pytest.approx(0.25)
    assert ratio.keep_logit.grad is not None and ratio.keep_logit.grad.abs() > 0


def test_kv_cache_saving_is_reported():
    import memory_estimate as me
    base = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
    mha = ModelConfig.from_preset("gpt2", **base)
    assert me.kv_cache_bytes_per_token(mha) == (2 * 12 * 768 * 2,) * 2  # k and v, 12 layers, 16-bit
    mla = ModelConfig.from_preset("llama", **base, attention_type="mla")  # latent 256 + rope key 32
    assert me.kv_cache_bytes_per_token(mla)[0] == 12 * (256 + 32) * 2
    gqa_ra = ModelConfig.from_preset("team", **base, attention_type="reciprocal")  # fused keys: all 12 heads
    assert me.kv_cache_bytes_per_token(gqa_ra)[0] == 12 * (12 + 3) * 64 * 2
    fixed = ModelConfig.from_preset("gpt2", **base, kv_pruning="fixed")
    full, pruned = me.kv_cache_bytes_per_token(fixed)
    assert pruned == pytest.approx(0.382 * (full + 8 * 12 * 12))  # plus mass and exposure per head and key
    values = ModelConfig.from_preset("gpt2", **base, kv_pruning="fixed", kv_prune_values_only=True)
    _, pruned_values = me.kv_cache_bytes_per_token(values)
    assert pruned < pruned_values < full
    assert "saves 61%" in me.kv_cache_line(fixed)


def test_memory_estimate_prints_the_kv_cache_table(capsys):
    import memory_estimate as me
    me.main(["--kv_cache", "--presets", "gpt2", "--sizes", "124M"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and "(mla, 16-bit): 6.0 KiB per token" in out[1] and "saves 61%" in out[3]


# ---------------------------------------------------------------- FLOPs and parameters

@pytest.mark.parametrize("preset,options", [
    ("gpt2", {"attention_type": "mla"}), ("llama", {"attention_type": "mla"}), ("team", {"attention_type": "mla"}),
    ("gpt2", {"attention_type": "reciprocal", "ra_self_restart": True}), ("team", {"attention_type": "reciprocal"}),
    ("gpt2", {"ffn_type": "rmlp", "rmlp_mixer": True, "rmlp_gates": True}),
    ("llama", {"kv_pruning": "fixed", "kv_keep_recent": 4}), ("gpt2", {"kv_pruning": "learned", "kv_keep_recent": 4}),
])
def test_flops_formula_matches_flop_counter(preset, options):
    cfg = ModelConfig.from_preset(preset, **TINY, attention_backend="manual", **options)
    model = build_model(cfg)
    idx = torch.randint(0, 96, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    counted = counter.get_total_flops() / idx.numel()
    assert model.flops_per_token(32)["total"] == pytest.approx(counted, rel=0.03)


def test_mla_has_fewer_attention_flops_than_mha_and_reports_its_breakdown():
    mha = build_model(ModelConfig.from_preset("llama", **TINY)).flops_per_token(32)
    mla = build_model(ModelConfig.from_preset("llama", **TINY, attention_type="mla", kv_latent_dim=16))
    flops = mla.flops_per_token(32)
    assert flops["position_encoding"] == 3 * 3 * (4 + 1) * 8 * 2  # rope on 4 query heads and one shared key
    assert flops["attention_proj"] < mha["attention_proj"]
    pruned = build_model(ModelConfig.from_preset("llama", **TINY, kv_pruning="fixed")).flops_per_token(32)
    assert pruned["kv_pruning_scores"] == 2 * 32 * 64 * 2 and pruned["total"] > mha["total"]


@pytest.mark.parametrize("options", [{"attention_type": "mla"}, {"attention_type": "reciprocal"},
                                     {"ffn_type": "rmlp", "rmlp_mixer": True, "rmlp_gates": True},
                                     {"kv_pruning": "learned"}])
def test_meta_parameter_counts_are_exact(options):
    import memory_estimate as me
    cfg = ModelConfig.from_preset("llama", **TINY, **options)
    assert me.param_counts(me.meta_model(cfg)).total == sum(p.numel() for p in build_model(cfg).parameters())


# ---------------------------------------------------------------- interop and the ladder

@pytest.mark.parametrize("options,needle", [({"attention_type": "mla"}, "attention_type='mla'"),
                                            ({"ffn_type": "rmlp"}, "ffn_type='rmlp'"),
                                            ({"kv_pruning": "fixed"}, "kv_pruning='fixed'")])
def test_hugging_face_export_refuses_research_components(options, needle):
    with pytest.raises(ConfigError, match=needle):
        check_exportable(ModelConfig.from_preset("gpt2", **TINY, **options))


LADDER = [REPO_ROOT / "config" / "arch_gpt2.py", REPO_ROOT / "config" / "ablation_ra.py"]


def test_ablation_ladder_plans_seven_runs_with_the_right_overrides():
    result = subprocess.run([sys.executable, "ablate.py", *map(str, LADDER), "--dry_run"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ablation arch_gpt2-ablation_ra: 7 runs" in result.stdout
    commands = [line.split() for line in result.stdout.splitlines() if "train.py" in line]
    overrides = [tuple(a for a in command if a.startswith("--") and not a.startswith("--run_name"))
                 for command in commands]
    ra, rmlp = ("--attention_type=reciprocal", "--ra_rank=4"), ("--ffn_type=rmlp", "--rmlp_rank=64")
    assert overrides == [
        (), ra, ra + ("--ra_self_restart=True",), ra + rmlp, ra + rmlp + ("--rmlp_mixer=True",),
        ra + rmlp + ("--rmlp_gates=True",), ra + rmlp + ("--rmlp_mixer=True", "--rmlp_gates=True")]
    assert [command[-1] for command in commands] == [f"--run_name=arch_gpt2-ablation_ra-V{i}" for i in range(7)]
    steps, _ = ablate.read_steps_file(list(map(str, LADDER)))
    for changes in steps.values():  # every step is a valid architecture on a small GPT-2
        ModelConfig.from_preset("gpt2", **TINY, **changes)



def test_ladder_steps_v1_and_v3_train_end_to_end(tmp_path, char_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    steps_file = tmp_path / "two_steps.py"
    steps, _ = ablate.read_steps_file(list(map(str, LADDER)))
    steps_file.write_text(f"ablation_steps = {({k: steps[k] for k in ('V1', 'V3')})!r}\n")
    tiny = tiny_ablation_args(tmp_path, char_data, max_iters=2)
    ablate.main([str(LADDER[0]), str(steps_file), *tiny, f"--compare_out={tmp_path / 'cmp'}"])
    for step, ffn in (("V1", "standard"), ("V3", "rmlp")):
        run = tmp_path / "runs" / f"arch_gpt2-two_steps-{step}"
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        model = json.loads((run / "config.json").read_text())["config"]["model"]
        assert (model["attention_type"], model["ra_rank"], model["ffn_type"]) == ("reciprocal", 4, ffn)
