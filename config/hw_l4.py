# NVIDIA L4 (24 GB, about 22 GiB usable; Ada, bf16 and fp8 capable). Compose after an architecture:
#   python train.py config/arch_gpt2.py config/hw_l4.py
# Sized for GPT-2 124M at block_size 1024: micro-batch 8 is estimated at 11 GiB per GPU
# (memory_estimate.py, eager; compiled steps use less); 16 (19 GiB) is at the edge of the margin.
# The global batch is GPT-2's 0.5M tokens; train.py derives the accumulation from it and the GPU count.
# Larger presets (check with --dry_run=True, or let --auto_batch_size=True search):
#   350M: batch_size = 4      774M: batch_size = 2 with activation_checkpointing = "full"
#   1.5B: 28 GiB even at batch 1 with "full": use_fsdp = True over 4+ L4s (batch_size 2, "full": ~13 GiB each)
batch_size = 8
total_batch_size = 524288
dtype = "bfloat16"
compile = True
sdpa_kernel = "auto"  # FlashAttention-2 / memory-efficient kernels: no seq x seq matrices stored
activation_checkpointing = "none"
