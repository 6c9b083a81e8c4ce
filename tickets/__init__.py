"""tickets: finding lottery tickets (Frankle & Carbin 2019).

Model zoo (:mod:`tickets.models`), offline datasets (:mod:`tickets.data`), a deterministic,
mask-aware training loop (:mod:`tickets.train`), pruning masks (:mod:`tickets.prune`), IMP
(:mod:`tickets.imp`) into run directories (:mod:`tickets.runs`), instability analysis
(:mod:`tickets.instability`), tickets moved between seeds (:mod:`tickets.transfer`) and
checkpoint I/O (:mod:`tickets.store`).
"""

__version__ = "0.1.0"

from tickets.checkpoints import LoadedCheckpoint, read_params
from tickets.data import DataSplits, dataset_names, load_dataset
from tickets.errors import TicketsError
from tickets.imp import ImpConfig, ImpResult, run_imp
from tickets.instability import InstabilityResult, instability
from tickets.masks import load_mask
from tickets.models import build_model, model_names
from tickets.prune import (Sparsity, apply_mask, magnitude_global, magnitude_layerwise,
                           prunable, random_mask, sparsity)
from tickets.runs import (LevelFiles, RunInfo, build_run_model, level_dir, load_level,
                          load_run_data, open_run)
from tickets.sources import ModelSource, parse_model_source, resolve_model
from tickets.store import load_checkpoint, save_checkpoint
from tickets.train import TrainConfig, TrainResult, default_config, evaluate, train
from tickets.transfer import TransferResult, transfer_ticket

__all__ = ["DataSplits", "dataset_names", "load_dataset", "TicketsError", "build_model",
           "model_names", "load_checkpoint", "save_checkpoint", "TrainConfig", "TrainResult",
           "default_config", "evaluate", "train", "__version__",
           "Sparsity", "apply_mask", "magnitude_global", "magnitude_layerwise", "prunable",
           "random_mask", "sparsity", "ImpConfig", "ImpResult", "run_imp",
           "LevelFiles", "RunInfo", "build_run_model", "level_dir", "load_level",
           "load_run_data", "open_run", "InstabilityResult", "instability",
           "TransferResult", "transfer_ticket",
           "ModelSource", "parse_model_source", "resolve_model", "LoadedCheckpoint",
           "read_params", "load_mask"]
