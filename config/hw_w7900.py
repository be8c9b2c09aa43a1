# AMD Radeon PRO W7900 (48 GB, RDNA3 gfx1100) with a ROCm build of PyTorch, which drives it through
# the torch.cuda API ("cuda" devices). RDNA3 computes in bf16, so bfloat16 needs no loss scaling.
#   python train.py config/arch_gpt2.py config/hw_w7900.py
# Sized for GPT-2 124M at block_size 1024 with the chunked loss: micro-batch 32 is estimated at 17 GiB
# (memory_estimate.py, eager; compiled steps use less); 64 (27 GiB) is the largest that fits the margin.
# Larger presets (largest estimated fit; check with --dry_run=True or search with --auto_batch_size=True):
#   350M: batch_size = 32 (38 GiB)
#   774M: batch_size = 16 (43 GiB)
#   1.5B: batch_size = 4 (41 GiB)
# deliberate: where a ROCm build has no fused attention kernel for gfx1100 (older builds need
# TORCH_ROCM_AOTRITON_ENABLE_EXPERIMENTAL=1), SDPA falls back to the math kernel, which stores
batch_size = 32
total_batch_size = 524288
dtype = "bfloat16"
compile = True  # Triton on ROCm; set compile = False if the installed ROCm has no Triton for gfx1100
sdpa_kernel = "auto"
activation_checkpointing = "none"
