"""Lightweight CNNs (Isong 2025): dual-input-output training, unification, progressive unfreezing.

Stage 1 trains two branches of one tiny architecture jointly, one on original and one on
augmented images (`dual`); stage 2 builds the deployed model from them with a new head
(`unify`) and fine-tunes it with ULMFiT's gradual unfreezing (`unfreeze`). `train` runs the
stages and the baselines on the core loop, `export` writes ONNX fp32 and static int8,
`bench` counts MACs and times PyTorch against onnxruntime. See docs/compact.md.
"""
