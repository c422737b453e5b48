"""Training: a frozen `TrainConfig`, data on the device and a device in, a `TrainResult` out.

Nothing here imports Optuna; reporting and pruning reach the loop as callbacks.
"""
