"""Feature distillation trainer shared by adapter distillation and pruned self-distillation.

A frozen teacher and a student both map a normalised image batch to FPN levels (stride 4/8/14
relative to P: 4P², 2P², P²); the loss is a weighted MSE over the levels. AdamW, per-step cosine
schedule, mixed precision, DDP through torchrun, resumable checkpoints (optimizer, scheduler,
scaler, step), an optional on-disk teacher-feature cache, tqdm progress and a JSON-lines log.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import time
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from dart_ros.run_identity import check_run_identity, config_identity, dataset_fingerprint
from dart_ros.training import distributed as D
from dart_ros.training.data import UNREADABLE_LIST, ImageDataset, read_unreadable

log = logging.getLogger(__name__)

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclasses.dataclass
class TrainConfig:
    """Settings shared by the distillation tools (flags of the same names; help in FIELD_HELP)."""

    images: str = ""
    out_dir: str = "runs/distill"
    image_size: int = 0
    epochs: int = 5
    max_steps: int = 0
    batch_size: int = 4
    workers: int = 4
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    level_weights: Tuple[float, ...] = (0.15, 0.20, 0.65)
    amp: str = "bf16"
    teacher_cache: str = ""
    save_every_steps: int = 500
    log_every: int = 20
    resume: bool = True
    stop_after_steps: int = 0
    seed: int = 0
    device: str = "auto"
    strict_images: bool = False

    FIELD_HELP: ClassVar[Dict[str, str]] = {
        "images": "training images: a directory (searched recursively for .jpg/.jpeg/.png/.bmp/.webp) "
        "or a text file with one image path per line (relative to the file)",
        "out_dir": "output folder: checkpoints, train_log.jsonl, loss.png, summary.json, config.json; "
        "re-running the same command resumes the run recorded there",
        "image_size": "network input side in pixels, a multiple of 14 (0 = the model's own, 1008 for SAM3)",
        "epochs": "passes over the images",
        "max_steps": "stop the schedule after this many optimizer steps (0 = epochs decide)",
        "batch_size": "images per step and process",
        "workers": "data-loading processes per training process",
        "lr": "peak learning rate of AdamW (cosine decay per step)",
        "min_lr_ratio": "final learning rate as a fraction of --lr",
        "weight_decay": "AdamW weight decay",
        "level_weights": "loss weights of the 4P², 2P² and P² feature levels, three numbers (DART: 0.15 0.20 "
        "0.65; detection reads only P², so 0 0 1 trains for detection alone)",
        "amp": "mixed precision on CUDA: bf16, fp16 or none",
        "teacher_cache": "folder for cached teacher features (fp16; reused across runs with the same teacher); "
        "empty = no cache",
        "save_every_steps": "write last.pt (the resume point) every N steps",
        "log_every": "log a line to train_log.jsonl every N steps (short runs log more often)",
        "resume": "true: continue the run recorded in --out-dir if it is the same run (else stop with the "
        "difference); false: discard that run's state and start over",
        "stop_after_steps": "end this invocation after N steps, saving a resume point (time-limited jobs)",
        "seed": "random seed (data order, initialisation)",
        "device": "auto, cpu, cuda or cuda:N (under torchrun: each process its own GPU)",
        "strict_images": "false: skip unreadable images (listed in unreadable_images.txt and the summary); "
        "true: stop at the first one",
    }
    # fields that do not change what a run computes: they may differ when it is resumed
    NOT_IDENTITY: ClassVar[Tuple[str, ...]] = (
        "out_dir", "workers", "save_every_steps", "log_every", "resume", "stop_after_steps", "teacher_cache",
        "device", "strict_images",
    )  # fmt: skip
    FILE_FIELDS: ClassVar[Tuple[str, ...]] = ()  # checkpoint paths: identified by their content

    def validate(self) -> "TrainConfig":
        if not self.images:
            raise ValueError("--images (a directory or a list file) is required")
        if len(self.level_weights) != 3 or min(self.level_weights) < 0 or sum(self.level_weights) <= 0:
            raise ValueError(f"level_weights must be 3 non-negative numbers, not all zero: {self.level_weights}")
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {list(AMP)}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        return self

    @property
    def active_levels(self) -> Tuple[int, ...]:
        return tuple(i for i, w in enumerate(self.level_weights) if w > 0)


STATE_FILES = ("last.pt", "train_log.jsonl", "summary.json", "loss.png", UNREADABLE_LIST)


def claim_out_dir(
    cfg: TrainConfig, env: D.DistEnv, image_paths: Sequence[str], extra_state: Sequence[str] = ()
) -> bool:
    """Record this run's identity in ``cfg.out_dir``; True when a matching earlier run is continued.

    A different earlier run stops the job (RunMismatchError) unless ``cfg.resume`` is false, in
    which case its state files (``STATE_FILES`` + ``extra_state``) are removed first.
    """
    identity = config_identity(cfg, exclude=cfg.NOT_IDENTITY, files=cfg.FILE_FIELDS)
    identity.update(world_size=env.world_size, dataset=dataset_fingerprint(image_paths))
    state = [os.path.join(cfg.out_dir, n) for n in (*STATE_FILES, *extra_state)]
    # every rank reads before any writes: they all take the same decision
    resuming = check_run_identity(cfg.out_dir, identity, cfg.resume, write=False, state=[glob.escape(p) for p in state])
    D.barrier(env)
    if env.is_main:
        if not resuming:
            for p in state:
                if os.path.isfile(p):
                    os.remove(p)
        check_run_identity(cfg.out_dir, identity, resume=False, write=True)
        from dart_ros.cliutil import dump

        dump(cfg, os.path.join(cfg.out_dir, "config.json"))
    D.barrier(env)
    return resuming


class LevelsForward(nn.Module):
    """``module.forward_levels(x, levels)`` as ``forward`` (what DDP hooks into)."""

    def __init__(self, module: nn.Module, levels: Sequence[int]):
        super().__init__()
        self.module = module
        self.levels = tuple(levels)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.module.forward_levels(x, self.levels)


class TeacherCache:
    """Teacher features on disk, one fp16 file per (teacher, image, size, levels)."""

    def __init__(self, root: str, teacher_id: str, levels: Sequence[int], image_size: int):
        tag = hashlib.sha1(f"{teacher_id}|{image_size}|{tuple(levels)}".encode()).hexdigest()[:12]
        self.dir = os.path.join(root, tag)
        os.makedirs(self.dir, exist_ok=True)

    def _path(self, image_path: str) -> str:
        return os.path.join(self.dir, hashlib.sha1(image_path.encode()).hexdigest() + ".pt")

    def get(self, image_path: str) -> Optional[List[torch.Tensor]]:
        p = self._path(image_path)
        if not os.path.isfile(p):
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # a partial file from a killed run: recompute
            return None

    def put(self, image_path: str, feats: List[torch.Tensor]) -> None:
        p = self._path(image_path)
        tmp = p + f".{os.getpid()}.tmp"
        torch.save([f.detach().to("cpu", torch.float16) for f in feats], tmp)
        os.replace(tmp, p)


def weighted_mse(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], weights: Sequence[float]
) -> Tuple[torch.Tensor, List[float]]:
    parts = [F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher, strict=True)]
    total = sum(w * p for w, p in zip(weights, parts, strict=True))
    return total, [float(p.detach()) for p in parts]


class FeatureDistiller:
    """Runs the training loop. The tool supplies the modules and the checkpoint format.

    Args:
        teacher: module with ``forward_levels(x, levels)``; frozen, in eval mode.
        student: module with ``forward_levels(x, levels)``; its ``requires_grad`` parameters train.
        payload: f(epoch, loss) -> the format-specific part of a checkpoint (e.g. DART student keys).
        restore: f(checkpoint dict) -> loads the student from a checkpoint written with ``payload``.
        prefix: checkpoint name prefix (``adapter`` → ``adapter_epoch3.pt``, ``adapter_final.pt``).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: D.DistEnv,
        teacher: nn.Module,
        student: nn.Module,
        image_paths: Sequence[str],
        image_size: int,
        teacher_id: str,
        payload: Callable[[int, float], dict],
        restore: Callable[[dict], None],
        final_payload: Callable[[int, float], dict],
        prefix: str,
    ):
        self.cfg, self.env = cfg, env
        self.levels = cfg.active_levels
        self.weights = [cfg.level_weights[i] for i in self.levels]
        self.teacher = teacher.to(env.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = student.to(env.device)
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("the student has no trainable parameters")
        self.model = LevelsForward(self.student, self.levels)
        if env.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
        self.amp_dtype = AMP[cfg.amp] if env.device.type == "cuda" else None
        self.payload, self.restore, self.final_payload, self.prefix = payload, restore, final_payload, prefix
        self.dataset = ImageDataset(
            image_paths, image_size, unreadable_log=os.path.join(cfg.out_dir, UNREADABLE_LIST), strict=cfg.strict_images
        )
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(image_paths)} images are fewer than one batch of {cfg.batch_size} x {env.world_size}"
            )
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.log_every = max(1, min(cfg.log_every, self.total_steps // 20))  # a short run still draws a curve
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.total_steps, eta_min=cfg.lr * cfg.min_lr_ratio
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.cache = TeacherCache(cfg.teacher_cache, teacher_id, self.levels, image_size) if cfg.teacher_cache else None
        self.step = 0
        self.last_loss = float("nan")

    # ------------------------------------------------------------------ checkpoints

    def _ckpt_path(self, name: str) -> str:
        return os.path.join(self.cfg.out_dir, name)

    def save(self, name: str, epoch: int) -> None:
        if not self.env.is_main:
            return
        ckpt = dict(self.payload(epoch, self.last_loss))
        ckpt.update(
            step=self.step,
            optimizer_state_dict=self.optimizer.state_dict(),
            scheduler_state_dict=self.scheduler.state_dict(),
            scaler_state_dict=self.scaler.state_dict(),
            train_config=dataclasses.asdict(self.cfg),
        )
        tmp = self._ckpt_path(name + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self._ckpt_path(name))

    def try_resume(self) -> bool:
        path = self._ckpt_path("last.pt")
        if not (self.cfg.resume and os.path.isfile(path)):
            return False
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.restore(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        self.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
        self.scaler.load_state_dict(ckpt["scaler_state_dict"])
        self.step = int(ckpt["step"])
        self.last_loss = float(ckpt.get("loss", float("nan")))
        if self.env.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return True

    # ------------------------------------------------------------------ loop

    def _teacher_feats(self, idx: torch.Tensor, x: torch.Tensor) -> List[torch.Tensor]:
        paths = [self.dataset.paths[i] for i in idx.tolist()]
        if self.cache is not None:
            cached = [self.cache.get(p) for p in paths]
            if all(c is not None for c in cached):
                return [torch.stack([c[k] for c in cached]).to(self.env.device) for k in range(len(self.levels))]
        with torch.no_grad(), self._autocast():
            feats = self.teacher.forward_levels(x, self.levels)
        if self.cache is not None:
            for j, p in enumerate(paths):
                self.cache.put(p, [f[j] for f in feats])
        return feats

    def _autocast(self):
        import contextlib

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def train(self) -> Dict[str, object]:
        cfg, env = self.cfg, self.env
        if env.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)
        D.barrier(env)
        self.try_resume()
        log_file = open(self._ckpt_path("train_log.jsonl"), "a") if env.is_main else None
        progress = None
        if env.is_main:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.prefix} distillation", unit="step")
        t_start, images_seen = time.time(), 0
        self.student.train()
        stop_at = self.step + cfg.stop_after_steps if cfg.stop_after_steps else self.total_steps
        stop_at = min(stop_at, self.total_steps)
        while self.step < stop_at:
            epoch = self.step // self.steps_per_epoch
            self.sampler.set_epoch(epoch)
            skip = self.step - epoch * self.steps_per_epoch  # resume mid-epoch: same order, skip done batches
            order = list(self.sampler)[skip * cfg.batch_size :]
            loader = DataLoader(
                self.dataset,
                batch_size=cfg.batch_size,
                sampler=order,
                drop_last=True,
                num_workers=cfg.workers,
                pin_memory=env.device.type == "cuda",
            )
            for idx, x in loader:
                x = x.to(env.device, non_blocking=True)
                target = self._teacher_feats(idx, x)
                with self._autocast():
                    pred = self.model(x)
                loss, parts = weighted_mse(pred, target, self.weights)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                images_seen += x.shape[0] * env.world_size
                self.last_loss = float(D.all_reduce_mean(loss.detach(), env))
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{self.last_loss:.4g}")
                if log_file and (self.step % self.log_every == 0 or self.step == self.total_steps):
                    log_file.write(
                        json.dumps(
                            {
                                "step": self.step,
                                "epoch": epoch,
                                "loss": self.last_loss,
                                "level_losses": dict(zip(map(str, self.levels), parts, strict=True)),
                                "lr": self.scheduler.get_last_lr()[0],
                                "images_per_s": images_seen / max(time.time() - t_start, 1e-6),
                            }
                        )
                        + "\n"
                    )
                    log_file.flush()
                if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                    self.save("last.pt", epoch)
                if (self.step % self.steps_per_epoch == 0) or self.step >= stop_at:
                    break
            if self.step % self.steps_per_epoch == 0:
                self.save(f"{self.prefix}_epoch{epoch + 1}.pt", epoch + 1)
            self.save("last.pt", self.step // self.steps_per_epoch)
        if progress is not None:
            progress.close()
        if self.step < self.total_steps:  # stopped early on request: resumable, not final
            D.barrier(env)
            return {"steps": self.step, "stopped_early": True, "final_loss": self.last_loss}
        final_epoch = math.ceil(self.step / self.steps_per_epoch)
        summary = {
            "steps": self.step,
            "epochs": final_epoch,
            "final_loss": self.last_loss,
            "levels": list(self.levels),
            "weights": self.weights,
            "images": len(self.dataset),
            "world_size": env.world_size,
            "unreadable_images": read_unreadable(self._ckpt_path(UNREADABLE_LIST)),
        }
        if env.is_main:
            torch.save(self.final_payload(final_epoch, self.last_loss), self._ckpt_path(f"{self.prefix}_final.pt"))
            log_file.close()
            with open(self._ckpt_path("summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
            plot_log(self._ckpt_path("train_log.jsonl"), self._ckpt_path("loss.png"))
        D.barrier(env)
        return summary


def plot_log(log_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in open(log_path) if ln.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    marker = "o" if len(rows) < 30 else None  # a handful of points: show each
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=marker, label="weighted MSE")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="distillation loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
