"""The configured augmentations run on whole batches on the training device, with per-sample parameters."""
