"""Network architectures written for this project (the rest come from torchvision)."""
