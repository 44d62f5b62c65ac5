"""X-ray -> DRR translation (pix2pix): paired data from registration results (pairs), paired augmentation (augment),
training with checkpoints, exact resume and torchrun DDP (train, checkpoint), prediction on any X-ray
(predict) and evaluation (evaluate, metrics). Engine only: no Qt or Slicer imports. See ../README.md."""
