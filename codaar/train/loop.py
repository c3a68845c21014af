"""The training loop: a `Trainer` runs one `TrainConfig` from a laptop CPU to `torchrun` on a node.

With the defaults: AVT on the built-in data set, the authors' recipe (Adam 4e-4, batch 80,
per-module gradient clipping 0.5), float32, a progress bar, metrics every `--log-every`
steps in `runs/codaar/metrics.jsonl`, checkpoints in `runs/codaar/checkpoints/`, a summary at the end.

Reproducibility: the data order of an epoch comes from (seed, epoch) and every step reseeds torch's
RNG from (seed, rank, step) for dropout and draws CPC's t* from (seed, step); the model,
optimizer and quantizer state are all in the checkpoint. So a run killed at any point and resumed
with `--resume` ends exactly where the uninterrupted run would have. SIGTERM or SIGINT stops it at
the end of the step, after a checkpoint of that step (a second signal stops it at once).

No host sync between log points: a step's logged values, the codes it used and the divergence
guard's findings stay on the device (codaar/train/step_log.py) until the next log point reads them
with one copy, so the host can queue the next steps while the device works.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from codaar.data import TriModalData, build_synthetic, load_dataset, synthetic_config
from codaar.data import splits as split_check
from codaar.data.batches import BatchGather, Prefetcher, default_workers, to_device
from codaar.data.fingerprint import data_fingerprint
from codaar.data.fingerprint import refusal as fingerprint_refusal
from codaar.model import CoDAARModel, ModelConfig
from codaar.model.compiled import CompileError, accelerate
from codaar.run_folder import checkpoint as ckpt
from codaar.run_folder.checkpoint_writer import CheckpointWriter
from codaar.run_folder.metrics_log import METRICS_FILE, read_metrics
from codaar.runtime import distributed
from codaar.runtime.flops import count_flops, peak_flops, run_precision
from codaar.runtime.interrupts import StopRequest, stop_at_boundary
from codaar.runtime.locks import FolderLock
from codaar.runtime.profiling import nvtx_range
from codaar.runtime.schedule import step_decay
from codaar.runtime.seeding import derived_seed
from codaar.train.config import TrainConfig, resume_differences, saved_configs
from codaar.train.graph_step import GraphedTrainStep, set_learning_rate
from codaar.train.step_log import CodesSeen, LogPoint, StepLog, epoch_mean


class TrainingError(Exception):
    """A run that cannot start or continue as asked (the message says why and what to do)."""


class DivergenceError(Exception):
    """The run went non-finite; it stopped without saving that state (the message names the step,
    what went non-finite and the last good checkpoint)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run at a step boundary, after a checkpoint of that step."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name} at step {step}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


# ----------------------------------------------------------------------------------- data
def load_data(cfg: TrainConfig) -> TriModalData:
    if cfg.data is not None:
        return load_dataset(cfg.data)
    overrides = {} if cfg.pretrain_clips is None else {"num_pretrain": cfg.pretrain_clips}
    return build_synthetic(synthetic_config(cfg.data_preset, seed=cfg.data_seed, **overrides))


def resolve_model_config(cfg: TrainConfig, data: TriModalData) -> ModelConfig:
    """The run's model: input sizes from the data, the reset draws seeded by the run's seed."""
    modalities = cfg.model.modalities
    missing = [m for m in modalities if m not in data.modalities]
    if missing:
        raise TrainingError(f"--modalities {','.join(modalities)}: the data has no {missing} "
                            f"(it has {list(data.modalities)})")
    video = data.feature_shape("video")
    text_dim = data.feature_shape("text")[-1] if "text" in modalities else 768
    return cfg.model.replace(audio_dim=data.feature_shape("audio")[-1],
                             video_input="spatial" if len(video) == 3 else "vector", video_dim=video[-1],
                             text_dim=text_dim, reset_seed=cfg.seed)


class EpochBatches:
    """Which clips each step reads: a permutation of the split per epoch, cut into global batches, of
    which each rank takes an equal contiguous share (a batch that does not split evenly is skipped).
    Clips are given as positions within the split."""

    def __init__(self, num_clips: int, cfg: TrainConfig, group: distributed.ProcessGroup):
        self.num_clips, self.cfg, self.group = num_clips, cfg, group
        if cfg.batch_size % group.world_size:
            raise TrainingError(f"--batch-size {cfg.batch_size} must split evenly over {group.world_size} processes")
        full, rest = divmod(num_clips, cfg.batch_size)
        keep_rest = rest and not cfg.drop_last and rest % group.world_size == 0
        self.steps_per_epoch = full + bool(keep_rest)
        if self.steps_per_epoch == 0:
            raise TrainingError(f"split {cfg.split!r} has {num_clips} clips, fewer than one batch of {cfg.batch_size}")

    def plan(self, first_step: int, last_step: int) -> Iterator[np.ndarray]:
        """The positions of every step from `first_step` up to `last_step` (excluded), across epochs."""
        step = first_step
        while step < last_step:
            epoch, position = divmod(step, self.steps_per_epoch)
            yield from self(epoch, position)[: last_step - step]
            step = (epoch + 1) * self.steps_per_epoch

    def __call__(self, epoch: int, first_step: int = 0) -> list[np.ndarray]:
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, 1, epoch))
        order = torch.randperm(self.num_clips, generator=generator).numpy()
        batches = []
        for step in range(first_step, self.steps_per_epoch):
            batch = order[step * self.cfg.batch_size : (step + 1) * self.cfg.batch_size]
            share = len(batch) // self.group.world_size
            batches.append(batch[self.group.rank * share : (self.group.rank + 1) * share])
        return batches


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """MultiStepLR stepped per epoch, as the authors do (milestones 10, 20, 30; gamma 0.5)."""
    return step_decay(cfg.lr, cfg.lr_gamma, cfg.lr_milestones, epoch)


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: TrainConfig, group: distributed.ProcessGroup):
        self.cfg, self.group = cfg, group
        self.device = group.device
        self.dtype = torch.float64 if cfg.float64 else torch.float32
        torch.set_flush_denormal(True)  # the authors' tiny init makes denormals, 30x slower on CPUs

        if cfg.bf16 and self.device.type != "cuda":
            raise TrainingError(f"--bf16: bf16 autocast runs on CUDA only; this run is on {self.device.type}")
        self.data = load_data(cfg)
        if cfg.split not in self.data.splits:
            raise TrainingError(f"--split {cfg.split}: the data has no such split (it has {sorted(self.data.splits)})")
        if not cfg.allow_split_problems and (problem := split_check.refusal(self.data, "training")):
            raise TrainingError(problem)
        self.data_fingerprint = data_fingerprint(self.data)  # recorded in every checkpoint, compared on resume
        needed = cfg.model.cpc_prediction_steps + 2
        if cfg.model.cpc and self.data.segments < needed:
            raise TrainingError(f"--cpc-prediction-steps {cfg.model.cpc_prediction_steps}: CPC needs clips of at "
                                f"least {needed} segments, the data has {self.data.segments}")
        self.batches = EpochBatches(len(self.data.split(cfg.split)), cfg, group)
        self.total_steps = cfg.epochs * self.batches.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.gather = BatchGather(self.data, cfg.split, cfg.model.modalities)

        self.model_config = resolve_model_config(cfg, self.data)
        torch.manual_seed(cfg.seed)  # the same initial weights and codebooks on every rank
        self.model = CoDAARModel(self.model_config).to(self.device, self.dtype)
        try:
            accelerate(self.model, compile=cfg.compile, channels_last=cfg.bf16 and self.device.type == "cuda")
        except CompileError as exc:
            raise TrainingError(str(exc)) from None
        self.ddp = (DistributedDataParallel(self.model, broadcast_buffers=False)  # codebooks sync by all-reduce
                    if group.world_size > 1 else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        # The authors clip each module group on its own (docs/method.md §6).
        self.clip_groups = {name: list(getattr(self.model, name).parameters())
                            for name in ("encoders", "text_lstm", "cpc", "decoders")
                            if getattr(self.model, name) is not None}

        self.step_flops = self._count_step_flops()
        self.peak_flops = (peak_flops(torch.cuda.get_device_name(self.device), run_precision(self.dtype, cfg.bf16))
                           if self.device.type == "cuda" else None)

        self.run_dir = Path(cfg.out)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.skipped_steps = 0  # batches whose optimizer step --on-nonfinite skip left out
        self.checkpoints = CheckpointWriter(self.run_dir, cfg.checkpoint_every, self.total_steps,
                                            cfg.keep_checkpoints, enabled=group.is_main)
        self.lock = None
        try:
            self.step = self._start_or_resume()
            self.graph_step = self._graph_step() if cfg.cuda_graph else None
            self.tensorboard = self._tensorboard() if cfg.tensorboard and group.is_main else None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder (the lock also dies with the process)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ------------------------------------------------------------------------ run folder
    def _start_or_resume(self) -> int:
        """Take the run folder (one writer at a time), clean what killed writes left, and start a new
        run or continue from the newest checkpoint that verifies. Returns the step to start from."""
        checkpoints = self.run_dir / "checkpoints"
        has_run = any(checkpoints.glob("step-*")) if checkpoints.is_dir() else False
        resume = self.cfg.resume == "yes" or (self.cfg.resume == "auto" and has_run)
        if resume and not has_run:
            raise TrainingError(f"--resume: {self.run_dir} has no checkpoint to resume from")
        if not resume and has_run:
            raise TrainingError(f"{self.run_dir} already holds a run: continue it with --resume, "
                                f"or choose another --out")
        if self.group.is_main:
            self.lock = FolderLock(self.run_dir, "training run").acquire()
            leftovers = ckpt.clean_leftovers(self.run_dir) + _clean_run_leftovers(self.run_dir)
            if leftovers:
                print(f"removed what a killed run left in {self.run_dir}: {', '.join(p.name for p in leftovers)}")
        if not resume:
            if self.group.is_main:
                self._write_config(resumes=[])
                self.metrics_path.write_text("")
            return 0
        folder, passed_over = ckpt.newest_verified(self.run_dir)
        if passed_over and self.group.is_main:
            for problem in passed_over:
                print(f"resume: passing over a checkpoint that does not verify: {problem}")
            print(f"resume: continuing from {folder}")
        tensors, meta = ckpt.load_checkpoint(folder)
        self._check_resume(meta, folder)
        weights = ckpt.prefixed(tensors, "model")
        ckpt.check_tensors(weights, self.model.state_dict(), folder / ckpt.TENSORS,  # refused, never converted
                           self.model.defaulted_state_keys())
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["optimizer"], self.optimizer,
                                                                folder / ckpt.TENSORS))
        for group in self.optimizer.param_groups:  # as saved by a --cuda-graph run; its step sets it again
            group["capturable"] = False
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        if self.group.is_main:  # forget metrics logged after the checkpoint: those steps run again
            lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
            kept = [line for line in lines if _logged_step(line) <= meta["step"]]
            _atomic_write(self.metrics_path, "".join(line + "\n" for line in kept))
        return meta["step"]

    def _check_resume(self, meta: dict, folder: Path) -> None:
        """Refuse settings that must match the checkpoint's; announce and record those that change the run."""
        where = folder / ckpt.META
        saved_train, saved_model = saved_configs(meta, str(where))
        refused, changed = resume_differences(saved_train, self.cfg, saved_model, self.model_config)
        if changed_data := fingerprint_refusal(meta.get("data_fingerprint"), self.data_fingerprint, "--resume"):
            refused.append(changed_data)
        if refused:
            raise TrainingError(f"--resume {self.run_dir}: " + "; ".join(refused))
        if self.group.is_main:
            previous = self._read_config().get("resumes", [])
            record = {"step": meta["step"], "changed": {name: [old, new] for name, old, new in changed}}
            self._write_config(resumes=previous + [record])
            for name, old, new in changed:
                print(f"resume: {name} {old!r} -> {new!r} (changes the run from step {meta['step']} on; "
                      f"recorded in {self.run_dir / 'config.json'})")

    def _read_config(self) -> dict:
        try:
            return json.loads((self.run_dir / "config.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write_config(self, resumes: list[dict]) -> None:
        """config.json: the run's settings now, the resolved model, and what each resume changed."""
        config = {"train": self.cfg.to_dict(), "model": self.model_config.to_dict(), "resumes": resumes,
                  "data_fingerprint": self.data_fingerprint}
        _atomic_write(self.run_dir / "config.json", json.dumps(config, indent=1))

    def _checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """What a checkpoint holds: the state's tensors where they are (the writer copies them to the
        host at once) and the JSON metadata."""
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        optimizer_tensors, optimizer_meta = ckpt.flatten_optimizer(self.optimizer)
        tensors.update(optimizer_tensors)
        meta = {"config": self.cfg.to_dict(), "model_config": self.model_config.to_dict(),
                "optimizer": optimizer_meta, "epoch": self.step // self.batches.steps_per_epoch,
                "skipped_steps": self.skipped_steps, "data_fingerprint": self.data_fingerprint}
        return tensors, meta

    def _graph_step(self) -> GraphedTrainStep:
        if self.device.type != "cuda" or self.group.world_size > 1:
            raise TrainingError(f"--cuda-graph needs one process on a CUDA device; this run has "
                             f"{self.group.world_size} process(es) on {self.device.type}")
        return GraphedTrainStep(self.model, self.optimizer, self.optimize)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrainingError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # ------------------------------------------------------------------------------ steps
    def _batch(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """The model's inputs for these clips, on the device, gathered now (`run` gathers them ahead); with
        text also its real-token mask ("text_mask", all True for class prompts), which the model's text
        encoder and CPC respect."""
        host = self.gather.gather_into(positions, self.gather.buffers(len(positions), pin=self.device.type == "cuda"))
        return to_device(host, self.device, self.dtype)

    def _prefetcher(self) -> Prefetcher:
        """The batches of the steps still to run, gathered ahead (--data-workers)."""
        workers = default_workers() if self.cfg.data_workers is None else self.cfg.data_workers
        return Prefetcher(self.gather, self.batches.plan(self.step, self.total_steps),
                          self.cfg.batch_size // self.group.world_size, self.device, self.dtype, workers,
                          first_step=self.step)

    def train_step(self, positions: np.ndarray, batch: dict[str, torch.Tensor] | None = None,
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One optimisation step on the clips at these positions of the split: (logged values, indices).
        `batch`: those clips already on the device (from `run`'s prefetcher); none gathers them now."""
        cfg = self.cfg
        torch.manual_seed(derived_seed(cfg.seed, 2, self.group.rank, self.step))  # dropout of this step
        cpc_generator = torch.Generator().manual_seed(derived_seed(cfg.seed, 3, self.step))  # same on all ranks
        set_learning_rate(self.optimizer, lr_at(cfg, self.step // self.batches.steps_per_epoch))
        if batch is None:
            batch = self._batch(positions)
        if self.graph_step is not None:
            return self.graph_step(batch, cpc_generator)
        return self.optimize(batch, cpc_generator=cpc_generator)

    def optimize(self, batch: dict[str, torch.Tensor], **model_inputs) -> tuple[dict, dict]:
        """Forward, backward, clipping and Adam on one batch: (logged values, indices), all tensors."""
        cfg = self.cfg
        model = self.ddp or self.model
        autocast = cfg.bf16 and self.device.type == "cuda"
        # A captured graph must not keep autocast's cast-weight cache (torch's CUDA-graph rules).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=not cfg.cuda_graph):
            out = model(batch, **model_inputs)
        self.optimizer.zero_grad(set_to_none=True)
        with nvtx_range("backward"):
            out.loss.backward()
        with nvtx_range("optimizer"):
            norms = {f"grad_norm/{name}": torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
                     for name, params in self.clip_groups.items()}
            values = {"loss": out.loss.detach(), **{k: v.detach() for k, v in out.losses.items()}, **norms}
            if cfg.on_nonfinite == "skip" and not _all_finite(values):  # one host sync, opted in
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
            else:
                self.optimizer.step()
        values.update(out.metrics)
        if cfg.on_nonfinite == "skip":
            values["skipped_steps"] = out.loss.new_tensor(float(self.skipped_steps))
        return values, out.indices

    def advance(self, positions: np.ndarray, batch: dict[str, torch.Tensor] | None = None) -> None:
        """Train one step and fold what it logs into the device-side log: no value is read back."""
        values, indices = self.train_step(positions, batch)
        self.step_log.add(self.step + 1, values)
        self.codes_seen.add(self.step, indices)
        self.step += 1

    def run(self) -> dict:
        cfg = self.cfg
        started, first_step = time.perf_counter(), self.step
        self.records = self._logged_records()
        self.step_log = StepLog(self.device, self._guarded)
        self.codes_seen = CodesSeen(self.model_config.modalities, self.model_config.num_codes,
                                    self.batches.steps_per_epoch, self.device)
        self.window_started, self.data_wait = time.perf_counter(), 0.0
        progress = tqdm(total=self.total_steps, initial=self.step, desc="codaar", unit="step", dynamic_ncols=True,
                        disable=not (cfg.progress and self.group.is_main))
        log = open(self.metrics_path, "a") if self.group.is_main else None
        feed = self._prefetcher()
        if self.step >= self.total_steps and self.group.is_main:
            print(f"{self.run_dir} already finished at step {self.step}: nothing to train")
        try:
            with stop_at_boundary("training") as stop:
                while self.step < self.total_steps:
                    epoch, position = divmod(self.step, self.batches.steps_per_epoch)
                    for positions in self.batches(epoch, position):
                        if self.step >= self.total_steps:
                            break
                        self.advance(positions, feed.next(positions))
                        progress.update(1)  # the bar counts steps queued: it reads nothing from the device
                        self._after_step(stop, feed, log, progress)
        finally:
            feed.close()
            progress.close()
            if log is not None:
                log.close()
            try:
                self.checkpoints.close()  # the run's exit waits for its last checkpoint (and raises its failure)
            finally:
                self.close()
        elapsed = time.perf_counter() - started
        return self._summary(self.step - first_step, elapsed)

    def _after_step(self, stop: StopRequest, feed: Prefetcher, log, progress) -> None:
        """At a log point, read the steps since the last one and check them; then, at a checkpoint
        step or when a signal asked the run to stop, write a checkpoint (never of a non-finite state)."""
        cfg = self.cfg
        self.checkpoints.raise_failure()  # a failed background write stops the run at the next step
        saving = self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps
        # One process stops at the end of the step the signal arrived in; DDP ranks agree at a log
        # point (the signal may reach them in different steps, and agreeing is a collective).
        stop_now = stop.signum is not None and self.group.world_size == 1
        if not (saving or stop_now or self.step % cfg.log_every == 0):
            return
        self._log_point(feed, log, progress)
        signum = stop.signum if self.group.world_size == 1 else self._agreed_signal(stop.signum)
        if self.step == self.total_steps:
            signum = None  # the run is complete: it ends as it would have
        if (saving or signum is not None) and self.checkpoints.enabled:
            # snapshot now, write in the background (after the log point: never a non-finite state)
            self.checkpoints.submit(self.step, *self._checkpoint_state())
        if signum is not None:
            self.checkpoints.close()  # the checkpoint it names is complete before the run says so
            written = self.checkpoints.written
            raise TrainingInterrupted(signum, self.step, written[-1] if written else None)

    def _agreed_signal(self, signum: int | None) -> int | None:
        """The signal one of the ranks received (all ranks call this at the same log points)."""
        flag = torch.tensor([signum or 0], device=self.device, dtype=torch.long)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def _log_point(self, feed: Prefetcher, log, progress) -> LogPoint:
        """Read the steps since the last log point (the one host sync in their span), write their
        record and stop the run if a guarded value was not finite in any of them."""
        point = self.step_log.read()
        now = time.perf_counter()
        seconds, self.window_started = now - self.window_started, now
        waited = feed.take_wait_seconds()
        self.data_wait += waited
        epoch = (self.step - 1) // self.batches.steps_per_epoch
        record = {"step": self.step, "epoch": epoch, "lr": lr_at(self.cfg, epoch), "steps": point.steps,
                  **point.values, **self._speed(point.steps, seconds, waited)}
        self.records.append(record)
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            if self.tensorboard is not None:
                for key, value in record.items():
                    self.tensorboard.add_scalar(key, value, self.step)
        if point.nonfinite:
            raise DivergenceError(self._divergence_message(point))
        progress.set_postfix(self._postfix(record), refresh=False)
        return point

    def _speed(self, steps: int, seconds: float, waited: float) -> dict[str, float]:
        """Wall-clock rates of `steps` steps that took `seconds`, `waited` of them waiting for batches;
        MFU on CUDA, against the card's peak for the run's precision (absent for an unknown card)."""
        seconds = max(seconds, 1e-9)
        speed = {"step_ms": 1000 * seconds / steps, "data_wait_ms": 1000 * waited / steps,
                 "clips_per_second": steps * self.cfg.batch_size / seconds}
        if self.peak_flops is not None:
            speed["mfu"] = self.step_flops * steps / seconds / self.peak_flops
        return speed

    def _guarded(self, key: str) -> bool:
        """Whether a non-finite `key` stops the run: the codebooks always (no step can undo them); the
        loss and gradients unless their batches are skipped (--on-nonfinite skip)."""
        if key.startswith("max_abs_codeword/"):
            return True
        return self.cfg.on_nonfinite == "stop" and (
            key in ("loss", "dqa", "cpc") or key.startswith(("grad_norm/", "rec/", "commit/")))

    def _count_step_flops(self) -> int:
        """The dot-product FLOPs of one training step of this process (forward and backward, counted
        once at start by codaar.runtime.flops on a fresh model with the run's shapes, so that the run's
        own model, codebooks and random draws are untouched). Adam's elementwise work is not counted."""
        model = CoDAARModel(self.model_config).to(self.device, self.dtype).train()
        quantizer = model.quantizer  # a data-dependent init is once per run, not a step's work
        quantizer.load_state_dict({**quantizer.state_dict(), "initialized": torch.ones_like(quantizer.initialized)})
        batch = self._batch(self.batches(0)[0])
        autocast = self.cfg.bf16 and self.device.type == "cuda"

        def step() -> None:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(batch, cpc_generator=torch.Generator().manual_seed(0))
            out.loss.backward()

        return count_flops(step)[0]

    def _logged_records(self) -> list[dict]:
        """The records a resumed run logged in its last epoch before this process started, so that its
        summary covers that epoch, not only the steps since the resume (none of them, for a finished run)."""
        if self.step == 0:
            return []
        return [r for r in read_metrics(self.metrics_path) if r["step"] > self.step - self.batches.steps_per_epoch]

    def _divergence_message(self, point: LogPoint) -> str:
        self.checkpoints.wait()  # the checkpoint of an earlier step may still be being written
        try:
            last = ckpt.newest_verified(self.run_dir)[0]
            where = f"the last good checkpoint, {last}, is kept: continue from it with --resume (a lower --lr?)"
        except ckpt.CheckpointError:
            where = "no checkpoint was written before it"
        names = [f"codebook of {k.partition('/')[2]}" if k.startswith("max_abs_codeword/") else k
                 for k in point.nonfinite]
        return (f"step {point.first_nonfinite_step}: non-finite {', '.join(names)} (found at the log point of step "
                f"{self.step}); the run stopped without saving this state and {where}; --on-nonfinite skip would "
                f"skip such batches instead")

    def _postfix(self, record: dict) -> dict:
        mods = self.model_config.modalities
        postfix = {"loss": f"{record['loss']:.3f}"}
        postfix.update({f"ppl_{m[0]}": f"{record[f'perplexity/{m}']:.1f}" for m in mods})
        for a, b in itertools.combinations(mods, 2):
            postfix[f"agr_{a[0]}{b[0]}"] = f"{record[f'agreement/{a}-{b}']:.2f}"
        return postfix

    def _summary(self, steps_run: int, elapsed: float) -> dict:
        model_cfg, mods = self.model_config, self.model_config.modalities
        spe = self.batches.steps_per_epoch
        recent = [r for r in self.records if r["step"] > self.step - spe]
        covered = sum(r.get("steps", 1) for r in recent)
        # (records logged by an older version may lack a key)
        mean = ({key: epoch_mean(recent, key) for key in recent[-1] if key not in ("step", "steps")}
                if recent else {})
        steps_per_second = steps_run / max(elapsed, 1e-9)
        summary = {"steps": self.step, "steps_per_second": steps_per_second, "seconds": elapsed,
                   "run_dir": str(self.run_dir), "last_epoch_mean": mean, "step_flops": self.step_flops,
                   **self._speed(max(steps_run, 1), elapsed, self.data_wait)}
        # Codes used over the last epoch need its indices; a run resumed within it has only some of them,
        # and then the last step's logged window (codes used in the last `active_window` updates) stands in.
        window = self.model.quantizer.config.active_window
        full_epoch = 0 < self.codes_seen.steps and self.codes_seen.steps >= min(spe, self.step)
        used_where = "last epoch" if full_epoch else f"last {window} steps"
        last = recent[-1] if recent else {}
        used = self.codes_seen.counts() if full_epoch else {}
        for m in mods:
            summary[f"codes_used/{m}"] = used[m] if full_epoch else int(last.get(f"codes_recent/{m}", 0))
        summary["dead_codes_reset_last_epoch"] = int(sum(r.get("codes_reset", 0) for r in recent))
        for m in mods:  # codebook health at the last step
            for key in ("codes_recent", "codes_dead", "max_abs_codeword"):
                summary[f"{key}/{m}"] = last.get(f"{key}/{m}", math.nan)
        # Class-prompt text has only classes x tokens distinct inputs: few codes is no collapse there.
        varied = [m for m in mods if not (m == "text" and self.data.text_kind == "class-prompt")]
        summary["warnings"] = collapse_warnings(summary, mean, varied, mods, model_cfg.num_codes, used_where)
        if not self.group.is_main:
            return summary
        lines = [f"\nCoDAAR pretraining: {self.step} steps ({self.step / spe:.1f} epochs), "
                 f"{'/'.join(mods)}, preset {model_cfg.preset}, codebook init {model_cfg.quantizer.codebook_init}, "
                 f"{self.dtype}, {self.group.world_size} process(es) on "
                 f"{self.device.type}, {elapsed:.0f} s ({steps_per_second:.2f} steps/s)",
                 f"  loss {mean.get('loss', math.nan):.4f} (mean over the last {covered} steps): " + ", ".join(
                     f"{k} {mean[k]:.4f}" for k in mean if k.startswith(("rec/", "commit/", "dqa", "cpc"))
                     and not k.startswith("cpc_acc"))]
        if steps_run:
            lines.append("  " + self._speed_line(summary))
        for m in mods:
            usage = f"codes used in the {used_where} {summary[f'codes_used/{m}']}/{model_cfg.num_codes}"
            if full_epoch:
                usage += f", in the last {window} steps {summary[f'codes_recent/{m}']:.0f}"
            lines.append(f"  {m:<6} perplexity {mean.get(f'perplexity/{m}', math.nan):7.1f}   {usage}, "
                         f"max |codeword| {summary[f'max_abs_codeword/{m}']:.3g}")
        for a, b in itertools.combinations(mods, 2):
            lines.append(f"  index agreement {a}-{b}: {mean.get(f'agreement/{a}-{b}', math.nan):.3f} of frames")
        lines.append(f"  dead codes reset in the last epoch: {summary['dead_codes_reset_last_epoch']}")
        lines += [f"  WARNING: {warning}" for warning in summary["warnings"]]
        lines.append(f"  checkpoint: {ckpt.resolve_checkpoint(self.run_dir)}")
        lines.append(f"  metrics:    {self.metrics_path} (one JSON line per log point, every {self.cfg.log_every} "
                     f"steps)")
        print("\n".join(lines))
        return summary

    def _speed_line(self, speed: dict) -> str:
        """Step time, data wait, clips/s and MFU, as the end-of-run summary shows them."""
        line = (f"step {speed['step_ms']:.1f} ms, of it waiting for data {speed['data_wait_ms']:.1f} ms, "
                f"{speed['clips_per_second']:.1f} clips/s, {self.step_flops / 1e9:.3g} GFLOP per step")
        if "mfu" in speed:
            return line + f", MFU {speed['mfu']:.1%}"
        if self.device.type != "cuda":
            return line + f" (no MFU on {self.device.type})"
        return line + f" (no MFU: no peak known for {torch.cuda.get_device_name(self.device)})"


# A collapsed codebook (docs/findings.md §1: 6-12 of 800 codes until the first dead-code reset) against a
# healthy one (~70-100 of 800 after it): fewer than this share of K, or fewer than 16 codes.
COLLAPSED_SHARE, COLLAPSED_CODES = 0.02, 16
UNALIGNED_AGREEMENT = 0.02  # modalities choosing the same index on fewer frames share no vocabulary


def collapse_warnings(summary: dict, mean: dict, varied, modalities, num_codes: int,
                      used_where: str = "last epoch") -> list[str]:
    """What the end-of-run summary warns about: a collapsed codebook (few codes used in the last
    epoch by a modality with varied inputs), or modalities whose indices are not shared."""
    warnings = []
    threshold = min(COLLAPSED_CODES, max(2, math.ceil(COLLAPSED_SHARE * num_codes)))
    for m in varied:
        used = summary.get(f"codes_used/{m}", math.nan)
        if used < threshold:
            warnings.append(f"the {m} codebook looks collapsed: {used:.0f} of {num_codes} codes used in the "
                            f"{used_where} (the authors' init does this until the first dead-code reset, ~300 steps: "
                            f"train longer, or use the recommended preset's aligned init)")
    for a, b in itertools.combinations(modalities, 2):
        agreement = mean.get(f"agreement/{a}-{b}", math.nan)
        if agreement < UNALIGNED_AGREEMENT:
            warnings.append(f"{a} and {b} choose the same code on {agreement:.1%} of frames: their indices are not "
                            f"shared (is CSA off?)")
    return warnings


def _all_finite(values: dict[str, torch.Tensor]) -> bool:
    return bool(torch.isfinite(torch.stack([v.detach().reshape(()).double() for v in values.values()])).all())


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


_RUN_LEFTOVERS = ("config.json.tmp", "metrics.jsonl.tmp")


def _clean_run_leftovers(run_dir: Path) -> list[Path]:
    found = [run_dir / name for name in _RUN_LEFTOVERS if (run_dir / name).exists()]
    for path in found:
        path.unlink()
    return found


def _atomic_write(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text)
    os.replace(staging, path)
