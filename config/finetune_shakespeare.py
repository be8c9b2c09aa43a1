# Fine-tune OpenAI's GPT-2 on Tiny Shakespeare (nanoGPT's finetune_shakespeare). The released
# weights read GPT-2 BPE tokens, so prepare that dataset first: python data/shakespeare/prepare.py
#   python train.py config/finetune_shakespeare.py                    # GPT-2 XL (1.5B): one large GPU
#   python train.py config/finetune_shakespeare.py --init_from=gpt2   # GPT-2 small (124M)
# The architecture comes from the weights: only dropout, attention_backend and a smaller block_size
# may be set next to init_from (anything else that disagrees with the weights is refused).
init_from = "gpt2-xl"
dataset = "shakespeare"

# 32 sequences of 1024 tokens per step; 20 steps see the ~304K training tokens about twice
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# a small constant learning rate: the weights are already good, fine-tuning only nudges them
learning_rate = 3e-5
decay_lr = False
min_lr = 3e-5  # unused without decay, but it may not exceed learning_rate

eval_interval = 5
eval_iters = 40
log_interval = 1
