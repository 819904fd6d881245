"""Fast implementations of `lm.model`'s kernels, for one backend each, with the same signatures.

`lm.model.kernels(cfg)` is the one place that chooses between them and the model's own plain
formulas (config key `model.grad_impl`).
"""
