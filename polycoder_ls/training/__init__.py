"""`polycoder-ls train`: train a small GPT-NeoX code model from scratch, or fine-tune one, on
source trees, reporting held-out perplexity before and after."""
