"""Batched image and geometry operations the face stages share (no torchvision needed)."""
