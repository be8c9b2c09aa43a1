# NVIDIA DGX Spark (GB10 Grace Blackwell: 128 GB of LPDDR5x shared by the CPU and the GPU).
#   python train.py config/arch_gpt2.py config/hw_gb10.py
# The GPU's memory is the system's memory: what the GPU takes, the OS, the data loader and a
# checkpoint being loaded or saved cannot use. Sized for GPT-2 124M at block_size 1024:
# micro-batch 32 is estimated at 35 GiB, leaving most of the 128 GB to the rest of the system.
# Larger presets: 350M: batch_size = 16 (31 GiB)   774M: batch_size = 16 (50 GiB)
#   1.5B: batch_size = 16 with activation_checkpointing = "full" (43 GiB); resuming also needs the
#   18 GiB checkpoint in RAM (see --dry_run=True)
batch_size = 32
total_batch_size = 524288
dtype = "bfloat16"
compile = True  # needs a PyTorch built for sm_121 (CUDA 13)
sdpa_kernel = "auto"
activation_checkpointing = "none"
