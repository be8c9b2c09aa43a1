# The reciprocal-attention ladder (V0-V6): each step adds one mechanism, on whatever base the other
# config files give (e.g. config/arch_gpt2.py). Run with
#   python ablate.py config/arch_gpt2.py config/ablation_ra.py --max_iters=2000
# ablate.py reads ablation_steps itself (this file may set nothing else). attention_type=reciprocal
# with ra_rank=4 splits every head into a standard and a 4-dim reciprocal part (64 = 60 + 4 for
# GPT-2); ffn_type=rmlp with rmlp_rank=64 gives 64 of the MLP's hidden units to its reciprocal part.
ablation_steps = {
    # V0 baseline: the base architecture unchanged
    "V0": {},
    # V1 RA: reciprocal attention
    "V1": {"attention_type": "reciprocal", "ra_rank": 4},
    # V2 RA + self-restart: out = (1 - a) attn + a v, a learned in [0, 0.5]
    "V2": {"attention_type": "reciprocal", "ra_rank": 4, "ra_self_restart": True},
    # V3 RA + R-MLP: the reciprocal MLP, plain fold (no mixer, no gates)
    "V3": {"attention_type": "reciprocal", "ra_rank": 4, "ffn_type": "rmlp", "rmlp_rank": 64},
    # V4 + mixer: the R-MLP's reciprocal part also reads the attention output
    "V4": {"attention_type": "reciprocal", "ra_rank": 4, "ffn_type": "rmlp", "rmlp_rank": 64, "rmlp_mixer": True},
    # V5 + gates: learned gates fold the standard and reciprocal parts (no mixer)
    "V5": {"attention_type": "reciprocal", "ra_rank": 4, "ffn_type": "rmlp", "rmlp_rank": 64, "rmlp_gates": True},
    # V6 both: mixer and gates
    "V6": {"attention_type": "reciprocal", "ra_rank": 4, "ffn_type": "rmlp", "rmlp_rank": 64, "rmlp_mixer": True,
           "rmlp_gates": True},
}
