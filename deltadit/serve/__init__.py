"""Serving bundles on NVIDIA Triton Inference Server: ``deltadit serve`` and ``deltadit triton-repo``.

model.py: one bundle's Triton tensors, request checks and batched runs; triton_model.py: the Python-backend
file a repository holds; repo.py: the repository writer; server.py: running tritonserver; cli.py: the
subcommands. Needs the ``[serve]`` extra (nvidia-pytriton ships tritonserver, tritonclient for clients).
"""
