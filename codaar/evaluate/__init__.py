"""Downstream evaluation of a pretrained CoDAAR checkpoint (docs/method.md §7): `python -m codaar.evaluate`.

Modules, one idea each:
  run       -- evaluate(checkpoint, ...): the protocols of one checkpoint, as tables (and plots)
  protocols -- AVE classification, AVVP localisation, retrieval, under `official` or `clean`
  features  -- checkpoint + data loading with clear errors, frozen code features
  heads     -- the authors' downstream heads (AVE, AVVP) and the ExpLogLoss
  metrics   -- the authors' batch-wise metrics (AVE macro precision, AVVP P/R/F1) and Recall@K
  tables    -- paper-style tables (markdown + JSON)
  plots     -- PNG plots: codebook usage, agreement and health over training, same-index codewords
  curve     -- transfer over training: every saved checkpoint of a run scored (`--curve`)
  baselines -- a data set's reference baselines, no checkpoint (`python -m codaar.evaluate baselines`)
  errors    -- EvaluationError: bad inputs, reported by the command line with exit status 2

Ablations (pretraining + evaluation per variant and seed): ``python -m codaar.ablate``.
"""

from codaar.evaluate.errors import EvaluationError
from codaar.evaluate.run import evaluate

__all__ = ["EvaluationError", "evaluate"]
