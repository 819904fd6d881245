"""The models: the Transformer (weight specs, forward pass, kernels, rotary positions), its
parameter and FLOP counts, and the count-based bigram baseline."""
