"""Model weights that ship with deltadit (see docs/model-card-animals.md)."""
