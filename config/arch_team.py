# The lab's model_v1: the LLaMA recipe plus grouped-query attention (one key/value head per four
# query heads) and QK-norm (RMSNorm on each query and key head before attention, which keeps
# attention logits bounded at high learning rates). n_kv_head follows as n_head // 4 unless set.
arch_preset = "team"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
