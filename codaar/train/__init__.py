"""The trainer: `python -m codaar.train` (see `__main__`).

Modules, one idea each:
  config      -- TrainConfig (holding ModelConfig and QuantizerConfig), the command line, resume rules
  loop        -- the Trainer: data, model, optimizer, steps, logging, summary
  graph_step  -- the training step captured in a CUDA graph (--cuda-graph)

The run folder's files (checkpoints, metrics.jsonl) are `codaar.run_folder`, which the other
programs read without the trainer. The names below are imported on first use.
"""

from codaar.runtime.lazy import lazy_exports

_LAZY = {
    "main": "codaar.train.__main__",
    "Trainer": "codaar.train.loop",
    "TrainingError": "codaar.train.loop",
    "TrainConfig": "codaar.train.config",
    "parse_config": "codaar.train.config",
}


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = sorted(_LAZY)
