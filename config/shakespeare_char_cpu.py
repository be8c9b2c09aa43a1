# A first run that finishes on a laptop CPU in a few minutes: a 4-layer, 128-wide model on
# character-level Tiny Shakespeare (prepare it with: python data/shakespeare_char/prepare.py).
# Compose it after an architecture: python train.py config/arch_gpt2.py config/shakespeare_char_cpu.py
dataset = "shakespeare_char"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
max_iters = 2000
lr_decay_iters = 2000
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
eval_interval = 250
eval_iters = 20
log_interval = 50
dropout = 0.0
device = "cpu"
compile = False
