"""Lightning modules: the SSL models (``SSL_MODELS``), the offline finetuner, semi-supervised finetuning
and the linear probes. Importing the package registers every SSL model."""

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
