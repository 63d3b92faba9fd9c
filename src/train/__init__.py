"""Training orchestration.

* ``trainer.py``: :func:`build_trainer`, the one builder of every Lightning Trainer (callbacks by name
  through ``CALLBACKS``, loggers, reliability callbacks, atomic weights-only checkpoint I/O);
* ``pipeline.py``: :func:`run_pipeline`, pretraining plus the optional offline finetune (``results.json``);
* ``semi_supervised.py``: :func:`run_semi_supervised`, end-to-end finetuning of a pretrained run;
* ``sweep.py``: the refusal of a Hydra sweep whose jobs would share one output folder;
* ``loggers.py``: the experiment loggers (``LOGGERS``) and the wandb session of a stage;
* ``checkpoint_io.py``: checkpoints written atomically and read weights-only;
* ``callbacks/``: the online probe, the RNG/stop-flag resume state and the non-finite-loss guard.
"""
