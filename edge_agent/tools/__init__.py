"""Offline tools: training, replay, evaluation, plots and the demo."""
