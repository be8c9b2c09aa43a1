# LLaMA-style architecture at GPT-2-small size: RMSNorm, rotary position embeddings (RoPE),
# SwiGLU feed-forward (hidden 8/3 * n_embd rounded up to 256), pre-norm, no biases, untied
# input and output embeddings.
arch_preset = "llama"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
rope_theta = 10000.0
dropout = 0.0
