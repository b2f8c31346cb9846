"""Engine: batches from splits, training with validation selection, the checkpoint cache, evaluation records."""

from .evaluate import DEFAULT_SEEDS, SplitEvaluator, aggregate, evaluate_split, run_eval
from .train import TrainedModel, predict, train

__all__ = ["DEFAULT_SEEDS", "aggregate", "evaluate_split", "SplitEvaluator", "run_eval", "TrainedModel", "predict", "train"]
