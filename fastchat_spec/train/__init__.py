"""Training: ShareGPT data, the SentencePiece tokenizer, the Vicuna-style base model and the draft heads."""
