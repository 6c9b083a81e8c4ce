"""The IMP run directory: its format, defined once, and the readers every analysis uses.

Layout (written by :func:`tickets.imp.run_imp`)::

    RUN/run.json                    all hparams, seeds, versions, dataset, model, model kwargs
    RUN/level_LL/init.safetensors   weights the level starts from (m_L * theta_k)
    RUN/level_LL/final.safetensors  trained weights
    RUN/level_LL/mask.safetensors   mask of the level (all ones at level 0)
    RUN/level_LL/metrics.json       sparsity, test/train acc+loss, curve, wall time (last)
    RUN/controls/NAME/level_LL/...  the same four files for a control
    RUN/summary.json                one row per completed level (rewritten after each)
    RUN/analyses/NAME-HASH.json     cached analysis results (:func:`cache_file`)

Every file is written atomically and ``metrics.json`` last, so a level is complete iff its
``metrics.json`` exists (:func:`completed_levels`): that one rule serves resuming and reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from tickets.errors import CheckpointError, RunError
from tickets.store import cache_key, load_checkpoint, load_json, save_json

if TYPE_CHECKING:
    from tickets.data import DataSplits
    from tickets.train import TrainConfig

__all__ = ["RunInfo", "LevelFiles", "FORMAT", "FORMAT_VERSION", "level_dir", "completed_levels",
           "open_run", "load_level", "build_run_model", "load_run_data", "cache_file",
           "read_cache", "write_cache", "level_stamp"]

FORMAT = "gauge-imp-run"
FORMAT_VERSION = 1
#: The file of a level written last: its presence marks the level complete.
LAST_FILE = "metrics.json"


def level_dir(run_path: str | Path, level: int, control: str | None = None) -> Path:
    """``RUN/level_LL`` or ``RUN/controls/NAME/level_LL``."""
    base = Path(run_path) if control is None else Path(run_path) / "controls" / control
    return base / f"level_{int(level):02d}"


def completed_levels(base: str | Path) -> tuple[int, ...]:
    """Sorted levels ``LL`` of the ``base/level_LL`` folders that hold ``metrics.json``."""
    base = Path(base)
    if not base.is_dir():
        return ()
    return tuple(sorted(int(d.name[6:]) for d in base.iterdir()
                        if d.is_dir() and d.name.startswith("level_") and d.name[6:].isdigit()
                        and (d / LAST_FILE).is_file()))


@dataclass(frozen=True)
class RunInfo:
    """A run directory: ``meta`` is run.json, ``levels`` the completed ticket levels,
    ``controls[name]`` the completed levels of each control."""

    path: Path
    meta: dict
    levels: tuple[int, ...]
    controls: dict[str, tuple[int, ...]]

    def level_path(self, level: int, control: str | None = None) -> Path:
        return level_dir(self.path, level, control)

    def completed_levels(self, control: str | None = None) -> tuple[int, ...]:
        """Completed levels of the ticket (``control=None``) or of a control (``()`` if the run
        has no such control)."""
        return self.levels if control is None else self.controls.get(control, ())

    def metrics(self, level: int, control: str | None = None) -> dict:
        """metrics.json of a completed level: ``density``, ``sparsity``, ``test_acc``,
        ``test_loss``, ``train_acc``, ``train_loss``, ``wall_time``, ``curve``, ...
        Raises :class:`RunError` if the level is not complete."""
        self._check_complete(level, control)
        try:
            return load_json(self.level_path(level, control) / LAST_FILE)
        except CheckpointError as e:
            raise RunError(str(e)) from e

    def _check_complete(self, level: int, control: str | None) -> None:
        if control is not None and control not in self.controls:
            raise RunError(f"{self.path}: no control {control!r} (have: "
                           f"{', '.join(self.controls) or 'none'})")
        done = self.completed_levels(control)
        if level not in done:
            what = f"level {level}" + (f" of control {control!r}" if control else "")
            raise RunError(f"{self.path}: {what} is not complete (completed: "
                           f"{', '.join(map(str, done)) or 'none'})")

    @property
    def config(self) -> TrainConfig:
        """The run's :class:`~tickets.train.TrainConfig` (from run.json)."""
        from tickets.train import TrainConfig
        return TrainConfig.from_dict(self.meta["train_config"])

    @property
    def rewind_iter(self) -> int:
        return int(self.meta.get("rewind_iter", 0))

    @property
    def seed(self) -> int:
        """Seed of the weights (init and controls derive from it)."""
        return int(self.meta["seed"])

    @property
    def data_seed(self) -> int:
        """Seed of the batch order."""
        return int(self.meta.get("data_seed", self.meta["seed"]))

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def model_kwargs(self) -> dict:
        return dict(self.meta.get("model_kwargs") or {})

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def optimizer(self) -> str:
        return self.meta["train_config"]["optimizer"]

    def to_dict(self) -> dict:
        return {"path": str(self.path), "meta": self.meta, "levels": list(self.levels),
                "controls": {k: list(v) for k, v in self.controls.items()}}


@dataclass(frozen=True)
class LevelFiles:
    """The four files of one completed level: ``init``/``final`` params, ``mask``, ``metrics``."""

    level: int
    init: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    metrics: dict
    control: str | None = None
    path: Path | None = None

    def to_dict(self) -> dict:
        return {"level": self.level, "control": self.control, "path": str(self.path),
                "metrics": self.metrics}


def open_run(path: str | Path) -> RunInfo:
    """Read a run directory written by :func:`tickets.imp.run_imp`. Raises :class:`RunError`
    if ``path`` is not one (missing/corrupt run.json, unknown format)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunError(f"{path}: is a file, expected an IMP run directory")
    if not (path / "run.json").is_file():
        raise RunError(f"{path}: not an IMP run directory (no run.json)")
    try:
        meta = load_json(path / "run.json")
    except CheckpointError as e:
        raise RunError(str(e)) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RunError(f"{path / 'run.json'}: not a gauge IMP run (format {FORMAT!r} expected)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise RunError(f"{path / 'run.json'}: format version {meta.get('format_version')} is "
                       f"newer than this toolkit's ({FORMAT_VERSION})")
    cbase = path / "controls"
    controls = ({d.name: completed_levels(d) for d in sorted(cbase.iterdir()) if d.is_dir()}
                if cbase.is_dir() else {})
    return RunInfo(path=path, meta=meta, levels=completed_levels(path), controls=controls)


def _as_run(run: RunInfo | str | Path) -> RunInfo:
    return run if isinstance(run, RunInfo) else open_run(run)


def load_level(run_or_path: RunInfo | str | Path, level: int, *,
               control: str | None = None) -> LevelFiles:
    """Load a completed level (of the ticket, or of ``control``). Raises :class:`RunError` if
    the level is not complete or a file is missing/corrupt."""
    run = _as_run(run_or_path)
    run._check_complete(level, control)
    d = level_dir(run.path, level, control)
    try:
        init, _ = load_checkpoint(d / "init.safetensors")
        final, _ = load_checkpoint(d / "final.safetensors")
        mask, _ = load_checkpoint(d / "mask.safetensors", check=False)
        metrics = load_json(d / LAST_FILE)
    except CheckpointError as e:
        what = f"level {level}" + (f" of control {control!r}" if control else "")
        raise RunError(f"{what}: {e}") from e
    order = [k for k in run.meta.get("prunable", []) if k in mask]
    order += [k for k in mask if k not in order]
    return LevelFiles(level=int(level), init=init, final=final,
                      mask={k: mask[k].bool() for k in order}, metrics=metrics,
                      control=control, path=d)


def build_run_model(run: RunInfo | str | Path) -> nn.Module:
    """The zoo model of a run (architecture from run.json; weights are its seed's init)."""
    from tickets.store import model_from_meta
    run = _as_run(run)
    try:
        return model_from_meta(run.meta, str(run.path / "run.json"), seed=run.meta.get("seed", 0))
    except CheckpointError as e:
        raise RunError(str(e)) from e


def load_run_data(run: RunInfo | str | Path, root=None) -> DataSplits:
    """The dataset a run was trained on (``root``: folder of the dataset files, default the
    one recorded in run.json)."""
    from tickets.data import load_dataset
    from tickets.errors import DataError
    run = _as_run(run)
    if run.meta.get("dataset") is None:
        raise DataError(f"{run.path}: records no dataset (a run converted from OpenLTH)")
    return load_dataset(run.meta["dataset"], root=root if root is not None else
                        run.meta.get("root"), seed=run.meta.get("dataset_seed", 0))


# --------------------------------------------------------------------------- analysis caches

def cache_file(run_path: str | Path, name: str, key: Mapping[str, Any]) -> Path:
    """``RUN/analyses/NAME-HASH.json``: where an analysis caches its result for ``key`` (every
    option the result depends on, plus :func:`level_stamp` of the levels it read)."""
    return Path(run_path) / "analyses" / f"{name}-{cache_key(key)[:12]}.json"


def read_cache(path: str | Path) -> Any | None:
    """The cached JSON at ``path``, or ``None`` if absent or unreadable (then recompute)."""
    try:
        return json.loads(Path(path).read_text()) if Path(path).is_file() else None
    except (OSError, ValueError):
        return None


def write_cache(path: str | Path, obj: Any) -> None:
    """Cache ``obj`` at ``path`` atomically; a read-only run directory only costs the cache."""
    try:
        save_json(path, obj)
    except OSError:
        pass


def level_stamp(run: RunInfo, level: int, control: str | None = None) -> float:
    """mtime of a level's metrics.json (written last): a recomputed level invalidates caches."""
    try:
        return (run.level_path(level, control) / LAST_FILE).stat().st_mtime
    except OSError:
        return 0.0
