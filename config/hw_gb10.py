# NVIDIA DGX Spark (GB10 Grace Blackwell: 128 GB of LPDDR5x shared by the CPU and the GPU).
#   python train.py config/arch_gpt2.py config/hw_gb10.py
# The GPU's memory is the system's memory: what the GPU takes, the OS, the data loader and a
# checkpoint being loaded or saved cannot use. Sized for GPT-2 124M at block_size 1024 with the
# chunked loss: micro-batch 32 is estimated at 17 GiB, leaving most of the 128 GB to the system.
# Larger presets (memory_estimate.py; check with --dry_run=True): 350M: batch_size = 16 (24 GiB)
#   774M: batch_size = 16 (43 GiB)   1.5B: batch_size = 8 (52 GiB); resuming also needs the
#   18 GiB checkpoint in RAM
batch_size = 32
total_batch_size = 524288
dtype = "bfloat16"
compile = True  # needs a PyTorch built for sm_121 (CUDA 13)
sdpa_kernel = "auto"
activation_checkpointing = "none"
