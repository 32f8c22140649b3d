"""Architectures, their registry, the label-smoothing loss and the LightningModule."""
