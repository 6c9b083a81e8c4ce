"""tickets: finding lottery tickets (Frankle & Carbin 2019).

Model zoo (:mod:`tickets.models`), offline datasets (:mod:`tickets.data`), a deterministic,
mask-aware training loop (:mod:`tickets.train`), and checkpoint I/O (:mod:`tickets.store`).
"""

__version__ = "0.1.0"

from tickets.data import DataSplits, dataset_names, load_dataset  # noqa: E402
from tickets.errors import TicketsError  # noqa: E402
from tickets.models import build_model, model_names  # noqa: E402
from tickets.store import load_checkpoint, save_checkpoint  # noqa: E402
from tickets.train import TrainConfig, TrainResult, default_config, evaluate, train  # noqa: E402
from tickets.prune import (Sparsity, apply_mask, magnitude_global,  # noqa: E402
                           magnitude_layerwise, prunable, random_mask, sparsity)
from tickets.imp import (ImpResult, LevelFiles, RunInfo, build_run_model,  # noqa: E402
                         load_level, load_run_data, open_run, run_imp)
from tickets.instability import InstabilityResult, instability  # noqa: E402
from tickets.sources import ModelSource, parse_model_source, resolve_model  # noqa: E402
from tickets.checkpoints import LoadedCheckpoint, read_params  # noqa: E402
from tickets.masks import load_mask  # noqa: E402

__all__ = ["DataSplits", "dataset_names", "load_dataset", "TicketsError", "build_model",
           "model_names", "load_checkpoint", "save_checkpoint", "TrainConfig", "TrainResult",
           "default_config", "evaluate", "train", "__version__",
           # pruning and IMP (issue 3)
           "Sparsity", "apply_mask", "magnitude_global", "magnitude_layerwise", "prunable",
           "random_mask", "sparsity", "ImpResult", "LevelFiles", "RunInfo", "build_run_model",
           "load_level", "load_run_data", "open_run", "run_imp",
           # instability analysis (issue 5)
           "InstabilityResult", "instability",
           # bring your own models, checkpoints and masks
           "ModelSource", "parse_model_source", "resolve_model", "LoadedCheckpoint",
           "read_params", "load_mask"]
