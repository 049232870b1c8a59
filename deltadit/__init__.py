"""deltadit: Δ-DiT plans, diffusers DiT splitting, bundles and runtimes."""

__version__ = "0.1.0"
