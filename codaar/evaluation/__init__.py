"""Downstream evaluation of a pretrained CoDAAR checkpoint (METHOD §6).

Modules, one idea each:
  metrics   -- the authors' batch-wise metrics (AVE macro precision, AVVP P/R/F1) and Recall@K
  heads     -- the authors' downstream heads (AVE, AVVP) and the ExpLogLoss
  features  -- checkpoint + data loading with clear errors, frozen code features
  protocols -- AVE classification, AVVP localisation, retrieval, under `official` or `clean`
  tables    -- paper-style tables (markdown + JSON)

Command line: ``python -m codaar.evaluate CHECKPOINT --help``; ablations: ``python -m codaar.ablate``.
"""
