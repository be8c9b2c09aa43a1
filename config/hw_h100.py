# NVIDIA H100 80GB (SXM or PCIe; about 79 GiB usable; Hopper, bf16 and fp8 capable).
#   python train.py config/arch_gpt2.py config/hw_h100.py
#   torchrun --nproc_per_node=8 train.py config/arch_gpt2.py config/hw_h100.py
# Sized for GPT-2 124M at block_size 1024: micro-batch 32 is estimated at 35 GiB (eager; the logits
# and their fp32 softmax gradients are half of it); 64 (67 GiB) fits only just, compiled.
# Larger presets: 350M: batch_size = 16 (31 GiB)   774M: batch_size = 16 (50 GiB)
#   1.5B: batch_size = 8 (54 GiB), or 16 with activation_checkpointing = "full" (43 GiB)
# fp8 = True (torchao) trains the blocks' matmuls in float8: faster, with a small quality risk.
batch_size = 32
total_batch_size = 524288
dtype = "bfloat16"
compile = True
sdpa_kernel = "auto"  # PyTorch picks cuDNN or FlashAttention on Hopper
activation_checkpointing = "none"
