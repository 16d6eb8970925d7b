"""The retraining job: dataset, architectures, fit, evaluation and backtest, publish, watch."""
