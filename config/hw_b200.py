# NVIDIA B200 (HGX B200: 180 GB per GPU; Blackwell, bf16/fp8 and fp4 capable).
#   python train.py config/arch_gpt2.py config/hw_b200.py
#   torchrun --nproc_per_node=8 train.py config/arch_gpt2.py config/hw_b200.py   (accumulation 1)
# Sized for GPT-2 124M at block_size 1024: micro-batch 64 is estimated at 67 GiB; one GPU takes 128
# (130 GiB) too, but 64 x 8 GPUs is exactly the 0.5M-token global batch.
# Larger presets: 350M: batch_size = 32 (56 GiB)   774M: batch_size = 32 (86 GiB)
#   1.5B: batch_size = 32 (133 GiB), or 64 with activation_checkpointing = "full" (89 GiB)
batch_size = 64
total_batch_size = 524288
dtype = "bfloat16"
compile = True  # needs a PyTorch built for sm_100 (CUDA 12.8+)
sdpa_kernel = "auto"
activation_checkpointing = "none"
