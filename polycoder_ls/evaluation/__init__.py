"""`polycoder-ls eval`: perplexity per language (the PolyCoder paper's method) and hole
completion through the real server, per language."""
