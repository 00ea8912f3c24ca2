"""`mnist-tune`: an Optuna study whose trials are trainings, each a DVC experiment of the pipeline up to
train, shared by any number of workers through Optuna's storage.

- study.py: the storage and the study (opened by any number of workers at once), its settings, names
  and sampler seeds;
- worker.py: one worker's trials, with Optuna's own budget, heartbeat and retry machinery;
- experiments.py: a trial as `dvc exp run`, its figures, and the leftovers of trials whose worker died;
- tracking.py: the study's MLflow run, with Optuna's own figures;
- best.py: the best trial and how to adopt it.
"""
