"""Raw Stanford Cars preparation, the Dataset and DataModule, the image cache and the synthetic generator."""
