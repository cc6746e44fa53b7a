"""Layer 1: the architectures (``bench.models.architectures``) and RobustBench zoo models
(``bench.models.zoo``). Imports ``bench.core`` only.

The names a method plugin or a test uses are re-exported here: ``from bench.models import build_model``.
"""
from bench.models.architectures import MODELS, Classifier, ModelError, build_model, feature_extractor_and_head

__all__ = ["MODELS", "Classifier", "ModelError", "build_model", "feature_extractor_and_head"]
