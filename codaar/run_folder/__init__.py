"""The files of a run folder, which the trainer writes and every other program reads:

  checkpoint         -- checkpoints/step-*/ (safetensors + meta.json, metadata sealed under the SHA-256)
                        and `latest`, which never leads outside the run
  checkpoint_writer  -- the trainer's checkpoints: one bulk host copy, written in the background
  metrics_log        -- metrics.jsonl, one JSON object per training step

Below the model and the trainer (it imports nothing else of codaar): `CoDAARModel.from_checkpoint`
reads the format the trainer writes. A trained model with its data: `codaar.pretrained`.
"""
