"""Downstream evaluation of pretrained models.

- ``inputs``: what a downstream run reads (the linear-probing config, the pretraining run's model
  name / MC samples / checkpoint, the worker count).
- ``embed``: pre-embedding a transfer dataset with a frozen backbone (``pre_embed``).
- ``linear_probe``: training and testing the linear probe (``evaluate``) and the demo chain over a
  folder of runs (``probe_runs``).

The probe report is ``src/reports/linear_probing.py``; semi-supervised finetuning is ``src/train``.
"""
