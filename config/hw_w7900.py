# AMD Radeon PRO W7900 (48 GB, RDNA3 gfx1100) with a ROCm build of PyTorch, which drives it through
# the torch.cuda API ("cuda" devices). RDNA3 computes in bf16, so bfloat16 needs no loss scaling.
#   python train.py config/arch_gpt2.py config/hw_w7900.py
# Sized for GPT-2 124M at block_size 1024: micro-batch 16 is estimated at 19 GiB. The headroom is
# deliberate: where a ROCm build has no fused attention kernel for gfx1100 (older builds need
# TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL=1), SDPA falls back to the math kernel, which stores
# softmax(q k^T) for every layer: about 13.5 GiB more at this size (sdpa_kernel = "math" estimates it).
# Larger presets: 350M: batch_size = 8 (19 GiB)   774M: batch_size = 4 (23 GiB)
#   1.5B: batch_size = 2 with activation_checkpointing = "full" (29 GiB), or use_fsdp = True on several
batch_size = 16
total_batch_size = 524288
dtype = "bfloat16"
compile = True  # Triton on ROCm; set compile = False if the installed ROCm has no Triton for gfx1100
sdpa_kernel = "auto"
activation_checkpointing = "none"
