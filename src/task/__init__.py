"""Lightning modules.

* ``ssl.py`` / ``bayesian_ssl.py``: the SSL models (``SSL_MODELS``: ``ssl``, ``ssl_bayes_h``, ``ssl_bayes_z``);
* ``classifier.py``: the one classifier lifecycle (``ClassifierTask``, ``ClassificationMetrics``,
  ``FINETUNE_MODELS``) of ``finetuning.py`` (``LastLayerFinetuner``), ``semi_supervised.py``
  (``SemiSupervised``) and ``evaluation.py`` (the linear probes);
* ``optim.py``: ``OPTIMIZERS`` and ``SCHEDULERS``; ``base.py``: plain hyper-parameters;
* ``checkpoint.py``: ``load_ssl_model``.

Importing the package registers every SSL model.
"""

from src.task.bayesian_ssl import HBayesianSelfSupervisedLearning, StochasticOutput, ZBayesianSelfSupervisedLearning
from src.task.ssl import SSL_MODELS, BaseSelfSupervisedLearning, SelfSupervisedLearning

__all__ = [
    "SSL_MODELS",
    "BaseSelfSupervisedLearning",
    "HBayesianSelfSupervisedLearning",
    "SelfSupervisedLearning",
    "StochasticOutput",
    "ZBayesianSelfSupervisedLearning",
]
