# NVIDIA L4 (24 GB, about 22 GiB usable; Ada, bf16 and fp8 capable). Compose after an architecture:
#   python train.py config/arch_gpt2.py config/hw_l4.py
# Sized for GPT-2 124M at block_size 1024 with the chunked loss: micro-batch 16 is estimated at 11 GiB
# (memory_estimate.py, eager; compiled steps use less); 32 (17 GiB) is the largest that fits the margin.
# Larger presets (largest estimated fit; check with --dry_run=True or search with --auto_batch_size=True):
#   350M: batch_size = 8 (17 GiB)
#   774M: batch_size = 2 (19 GiB)
#   1.5B: does not fit one GPU: use_fsdp = True over several
# The global batch is GPT-2's 0.5M tokens; train.py derives the accumulation from it and the GPU count.
batch_size = 16
total_batch_size = 524288
dtype = "bfloat16"
compile = True
sdpa_kernel = "auto"  # FlashAttention-2 / memory-efficient kernels: no seq x seq matrices stored
activation_checkpointing = "none"
