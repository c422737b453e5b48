"""Search: study modules, storages, and the worker that asks Optuna for trials, trains them and
tells their outcomes.

- `worker`: the loop that asks for trials within the study's budget (`run_worker`);
- `trials`: the one trial path, which suggests, records, trains (`training.train_many`, or
  `train_folds` under cross-validation), reports and prunes, classifies and tells each trial;
- `reports`: what the trial path hands back (`TrialOutcome`, `Progress`) and how it names an ending;
- `settings` and `study`: what a run asks of a study, its sampler and pruner, and opening or
  resuming the study with its settings checked;
- `liveness`: heartbeats, and the running trials of dead workers failed and queued again;
- `record`, `provenance` and `outcomes`: what a study and its trials store, and the outcome words;
- `registry`: study modules; `storage` and the modules under it: storages; `launch`: many
  workers on one machine; `optuna_private`: the one place Optuna's private API is used.
"""
