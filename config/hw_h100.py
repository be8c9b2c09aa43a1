# NVIDIA H100 80GB (SXM or PCIe; about 79 GiB usable; Hopper, bf16 and fp8 capable).
#   python train.py config/arch_gpt2.py config/hw_h100.py
#   torchrun --nproc_per_node=8 train.py config/arch_gpt2.py config/hw_h100.py
# Sized for GPT-2 124M at block_size 1024 with the chunked loss: micro-batch 64 is estimated at 27 GiB
# (memory_estimate.py, eager; compiled steps use less); 128 (48 GiB) is the largest that fits the margin.
# Larger presets (largest estimated fit; check with --dry_run=True or search with --auto_batch_size=True):
#   350M: batch_size = 64 (65 GiB)
#   774M: batch_size = 32 (68 GiB)
#   1.5B: batch_size = 16 (73 GiB)
# fp8 = True (torchao) trains the blocks' matmuls in float8: faster, with a small quality risk.
batch_size = 64
total_batch_size = 524288
dtype = "bfloat16"
compile = True
sdpa_kernel = "auto"  # PyTorch picks cuDNN or FlashAttention on Hopper
activation_checkpointing = "none"
