"""Search: study modules, storages, and the worker that asks Optuna for trials, trains them and
tells their outcomes."""
