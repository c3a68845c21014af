"""The files of a run folder, which the trainer writes and every other program reads:

  checkpoint   -- checkpoints/step-*/ (safetensors + meta.json, verified by SHA-256) and `latest`
  metrics_log  -- metrics.jsonl, one JSON object per training step

Below the model and the trainer (it imports nothing else of codaar): `CoDAARModel.from_checkpoint`
reads the format the trainer writes. A trained model with its data: `codaar.pretrained`.
"""
