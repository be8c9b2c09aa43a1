# NVIDIA B200 (HGX B200: 180 GB per GPU; Blackwell, bf16/fp8 and fp4 capable).
#   python train.py config/arch_gpt2.py config/hw_b200.py
#   torchrun --nproc_per_node=8 train.py config/arch_gpt2.py config/hw_b200.py   (accumulation 1)
# Sized for GPT-2 124M at block_size 1024 with the chunked loss: micro-batch 64 is estimated at 27 GiB
# (memory_estimate.py, eager; compiled steps use less), and 64 x 8 GPUs is exactly the 0.5M-token
# global batch; one GPU alone takes up to 256 (89 GiB).
# Larger presets (largest estimated fit; check with --dry_run=True or search with --auto_batch_size=True):
#   350M: batch_size = 128 (119 GiB)
#   774M: batch_size = 64 (119 GiB)
#   1.5B: batch_size = 32 (115 GiB)
batch_size = 64
total_batch_size = 524288
dtype = "bfloat16"
compile = True  # needs a PyTorch built for sm_100 (CUDA 12.8+)
sdpa_kernel = "auto"
activation_checkpointing = "none"
