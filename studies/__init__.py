"""Built-in study modules, one per question; `hpsearch studies` lists them.

Each module declares a search space (`suggest(trial, base) -> TrainConfig`) and its defaults;
hpsearch.search.registry documents the names a module may define.
"""
