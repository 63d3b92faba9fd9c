"""The OOD-detection study (OpenOOD v1.5 protocol) over finetuned SSL runs.

- ``protocol``: the image lists of a protocol on disk and their preprocessing (default, Barlow Twins views).
- ``wrapper``: ``OODNetwork``, a run's SSL model and predictor: ``features(x, reads)`` and the network hooks.
- ``features``: ``Features`` (what the network gives for a batch) and the ``FeatureStore`` that computes
  them once per (preprocessor, split, batch) for all the detectors of a run.
- ``detectors``: the registry and one module per detector (a score over features, an optional fit).
- ``evaluator``: one network with one detector: fit, hyper-parameter search, scores, metric rows.
- ``metrics``: FPR@95, AUROC, AUPR_IN/OUT, ACC as OpenOOD computes them.
- ``study``: every run of a runs folder with one or more detectors; the files the study writes.
"""
