"""Text to training batches: tokenizers, documents from sources (files, the standard library,
`hf:` datasets, synthetic tasks), the token cache and `batch_at(seed, step)`."""
