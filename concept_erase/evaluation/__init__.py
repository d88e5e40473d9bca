"""Evaluation: batch generation, concept classifiers, FID/KID, robustness attacks and reports.

>>> from concept_erase.evaluation import EvalConfig, evaluate
>>> report = evaluate(EvalConfig(out="eval-no-red", prompts=["no-red"], adapters=["no-red"]))  # doctest: +SKIP

The command line is ``concept-erase eval`` (see ``concept-erase eval --help``).
"""

from .adversarial import AttackConfig, adversarial_attack
from .classifiers import ClipClassifier, ConceptClassifier, NudeNetClassifier, WorldConceptClassifier, load_classifier
from .clip_score import ClipScoreStats, load_clip
from .config import EvalConfig
from .evaluate import evaluate
from .fid import FeatureStats, feature_extractor, folder_metrics
from .membership import auc, membership_auc
from .prompts import PromptRow, load_prompts, read_prompt_file
from .relearning import RelearnConfig, relearning_attack

__all__ = [
    "evaluate", "EvalConfig", "ConceptClassifier", "WorldConceptClassifier", "NudeNetClassifier", "ClipClassifier",
    "load_classifier", "FeatureStats", "feature_extractor", "folder_metrics", "PromptRow", "load_prompts",
    "read_prompt_file", "AttackConfig", "adversarial_attack", "RelearnConfig", "relearning_attack", "auc",
    "membership_auc", "ClipScoreStats", "load_clip",
]
