# OpenAI GPT-2 small (124M), faithful to the released model:
# pre-norm LayerNorm (with bias) before attention and MLP plus a final LayerNorm, learned absolute
# positions, tanh-approximated GELU, a 4x MLP, biases in every linear layer, and the LM head tied
# to the token embedding. Other GPT-2 sizes: override n_layer/n_head/n_embd
#   350M: 24/16/1024   774M: 36/20/1280   1.5B: 48/25/1600
arch_preset = "gpt2"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
