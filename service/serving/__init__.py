"""Model serving: artifact -> fast predictor, the holder that swaps it, the alias poller."""
