# GPT-2 with LLaMA's normalisation and positions: RMSNorm, RoPE, pre-norm, but the standard 4x GELU
# MLP, no biases and tied embeddings. Isolates what RMSNorm + RoPE buy over GPT-2.
arch_preset = "hybrid"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
