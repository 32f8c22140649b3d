"""Prepared data to training: the Dataset and DataModule, the image cache, the transforms and the normalization."""
