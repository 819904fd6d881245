"""Open weights in and out: Hugging Face Llama and GPT-2 checkpoints and tokenizers."""
