# Every architecture option, set by hand. Copy this file and change what you want to compare;
# anything left out keeps the default shown here. Registered component names come from
# model_components.py (an unknown name is an error that lists the registered ones).
arch_preset = "custom"          # gpt2 | llama | team | hybrid | custom (custom: no preset values)

# sizes
n_layer = 12                    # transformer blocks
n_head = 12                     # query heads; n_embd must be divisible by n_head
n_kv_head = None                # key/value heads: None or n_head = multi-head, 1 = multi-query, between = grouped-query
n_embd = 768                    # model width
block_size = 1024               # context length in tokens
# vocab_size is taken from the dataset's meta.json (padded to a multiple of 64); setting it here forces it

# components
normalization = "layernorm"     # layernorm | layernorm_nobias | rmsnorm
norm_eps = 1e-5
norm_position = "pre"           # pre (GPT-2, LLaMA) | post (the original Transformer: norm after each residual add)
activation = "gelu"             # gelu (tanh form, GPT-2) | gelu_exact | silu | relu | leaky_relu
ffn_type = "standard"           # standard (up, activation, down) | swiglu (activation(gate) * up, then down)
ffn_hidden_size = None          # None: 4 * n_embd, or 8/3 * n_embd rounded up to a multiple of 256 for swiglu
attention_backend = "sdpa"      # sdpa (torch's fused kernels) | manual (the readable reference)
position_encoding = "learned_absolute"  # learned_absolute | rope | none
rope_theta = 10000.0            # RoPE base, used only with position_encoding = "rope"
qk_norm = False                 # normalise each query and key head before attention

# parameters and regularisation
bias = True                     # biases in linear layers (and LayerNorm's, for layernorm)
weight_tying = True             # share the token embedding with the LM head
dropout = 0.0                   # 0 <= dropout < 1, on embeddings, attention weights and residual branches
init_std = 0.02                 # normal init std; residual output projections use init_std / sqrt(2 * n_layer)
