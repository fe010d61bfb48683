"""msclr_core: the MS-CLR method in plain PyTorch + NumPy (never imports ray or mlflow).

Modules, one concept each:
  conventions  skeleton conventions registry (joints, parents, edges, flip, units)
  graph        ST-GCN spatial-partition adjacency per convention
  streams      joint / motion / bone streams
  augment      batched AimCLR augmentations (normal and extreme views)
  model        unified ST-GCN encoder (shared blocks, per-convention BN/adjacency/importance)
  queue        MoCo negative queue (all-gather under torch.distributed)
  pairing      per-batch (query, key) convention pairing policies
  builder      MS-CLR model: encoder_q, encoder_k, queue, SkeletonCLR/AimCLR losses
  pretrain     single-process pretraining loop (the Ray layer wraps the same functions)
  evaluation   frozen-feature linear probe, kNN, multi-skeleton ensemble, stream fusion
  data/        dataset format, NTU reader, importers, mocap, synthetic benchmark
"""

__version__ = "0.1.0"
