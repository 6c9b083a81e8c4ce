"""Iterative magnitude pruning (IMP) with rewinding, its controls, and resumable run directories.

Algorithm (Frankle & Carbin 2019; late rewinding: Frankle, Dziugaite, Roy & Carbin 2019/2020):

* Level 0 trains the dense network (or the network under a given starting mask) from its init
  ``theta_0`` for ``T`` iterations and keeps the weights ``theta_k`` at the rewind iteration
  ``k`` (``k = 0``: the original lottery ticket reset to init; ``k > 0``: late rewinding).
* Level ``L >= 1`` prunes the level ``L-1`` final weights (:mod:`tickets.prune`, magnitude,
  global or layerwise), resets the survivors to ``theta_k`` (``m_L * theta_k``) and retrains
  them from iteration ``k`` to ``T`` with the same schedule and data order (fast-forwarded: the
  learning rate and batch order are those of the absolute iteration; optimiser state fresh, as
  OpenLTH does).
* Controls, as OpenLTH branches, at every level ``L >= 1``: ``random_reinit`` keeps the mask
  ``m_L`` but draws fresh weights from another seed (Frankle & Carbin's "reinit" control);
  ``random_prune`` keeps the rewound weights ``theta_k`` under a random mask with the same
  per-layer survivor counts as ``m_L``. Both train from iteration ``k`` exactly as the ticket.

Run directory (read by the other analyses through :func:`open_run` / :func:`load_level`)::

    OUT/run.json                    all hparams, seeds, versions, dataset, model, model kwargs
    OUT/level_LL/init.safetensors   weights the level starts from (m_L * theta_k)
    OUT/level_LL/final.safetensors  trained weights
    OUT/level_LL/mask.safetensors   mask of the level (all ones at level 0)
    OUT/level_LL/metrics.json       sparsity, test/train acc+loss, curve, wall time (last)
    OUT/controls/NAME/level_LL/...  the same four files for a control
    OUT/summary.json                one row per completed level (rewritten after each)

Every file is written atomically and ``metrics.json`` last: a level is complete iff its
``metrics.json`` exists. A run killed at any moment and started again with the same arguments
redoes only the unfinished level and gives bit-identical results (training is a pure function
of its inputs; see :mod:`tickets.train`). A different configuration is refused (:class:`RunError`
naming the first differing field); more levels or more controls extend a run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from tickets import prune as P
from tickets.data import DataSplits
from tickets.errors import CheckpointError, ConfigError, RunError
from tickets.store import load_checkpoint, load_json, save_checkpoint, save_json, versions
from tickets.train import TrainConfig, train

__all__ = ["run_imp", "ImpResult", "RunInfo", "LevelFiles", "open_run", "load_level",
           "build_run_model", "load_run_data", "default_pruning", "check_imp_args",
           "CONTROLS", "FORMAT_VERSION", "level_dir"]

FORMAT = "gauge-imp-run"
FORMAT_VERSION = 1
#: Control branches :func:`run_imp` can add (OpenLTH's randomly_reinitialize / randomly_prune).
CONTROLS = ("random_reinit", "random_prune")

# Fields of run.json that define the experiment: a resumed run must match them exactly.
# ``levels`` and ``controls`` may grow; ``versions``, ``root`` and ``device`` are informative.
_IDENTITY = ("format_version", "model", "model_kwargs", "num_classes", "input_shape", "dataset",
             "seed", "data_seed", "dataset_seed", "train_config", "strategy", "fraction",
             "layer_fractions", "ignore", "prunable", "rewind_iter", "initial_mask")


# --------------------------------------------------------------------------- defaults

def default_pruning(model_name: str, prunable_names: list[str], fraction: float | None = None,
                    strategy: str | None = None) -> dict[str, Any]:
    """Paper-faithful pruning defaults for a zoo model: ``strategy``, ``fraction``,
    ``layer_fractions`` (absolute per-tensor rates) and ``ignore``.

    * ``mlp``/``lenet_300_100``: layerwise, 20% per layer, output layer at half rate (10%)
      -- Frankle & Carbin (2019), LeNet-300-100.
    * ``conv2``/``conv4``/``conv6``: layerwise; conv layers at 10%/10%/15%, fully connected
      20%, output 10% -- Frankle & Carbin (2019), Figure 2.
    * ``vgg11``/``vgg16``/``resnet20``/``cnn1d``: global 20%, output layer not pruned --
      Frankle & Carbin (2019) Section 4 and OpenLTH's ``sparse_global`` with
      ``pruning_layers_to_ignore='fc.weight'``.

    A user ``fraction`` scales the per-layer rates in the same proportions; a user
    ``strategy`` of ``"global"`` drops per-layer rates.
    """
    names = list(prunable_names)
    output = names[-1] if names else None
    if model_name in ("mlp", "lenet_300_100"):
        strat, base, ratios, ignore = "layerwise", 0.2, {output: 0.5}, []
    elif model_name in ("conv2", "conv4", "conv6"):
        conv_ratio = 0.75 if model_name == "conv6" else 0.5
        ratios = {n: conv_ratio for n in names if n.startswith("conv")}
        ratios[output] = 0.5
        strat, base, ignore = "layerwise", 0.2, []
    else:
        strat, base, ratios, ignore = "global", 0.2, {}, ([output] if output else [])
    frac = base if fraction is None else float(fraction)
    strat = strategy or strat
    if strat == "global":
        layer_fractions = {}
    else:
        layer_fractions = {n: frac * r for n, r in ratios.items() if n is not None and
                           n not in ignore}
    return {"strategy": strat, "fraction": frac, "layer_fractions": layer_fractions,
            "ignore": ignore}


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class ImpResult:
    """Outcome of :func:`run_imp`: one summary row per level (``level``, ``density``,
    ``sparsity``, ``test_acc``, ``test_loss``, ``train_acc``, ``train_loss``, ``wall_time``)
    for the ticket and for each control, plus which levels were read back from disk."""

    path: Path
    levels: tuple[dict, ...]
    controls: dict[str, tuple[dict, ...]]
    resumed: tuple[str, ...]
    computed: tuple[str, ...]
    wall_time: float

    def to_dict(self) -> dict:
        return {"path": str(self.path), "levels": list(self.levels),
                "controls": {k: list(v) for k, v in self.controls.items()},
                "resumed": list(self.resumed), "computed": list(self.computed),
                "wall_time": self.wall_time}


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

    @property
    def config(self) -> TrainConfig:
        """The run's :class:`~tickets.train.TrainConfig` (from run.json)."""
        return TrainConfig.from_dict(self.meta["train_config"])

    @property
    def rewind_iter(self) -> int:
        return int(self.meta.get("rewind_iter", 0))

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


# --------------------------------------------------------------------------- layout

def level_dir(run_path: str | Path, level: int, control: str | None = None) -> Path:
    """``RUN/level_LL`` or ``RUN/controls/NAME/level_LL``."""
    base = Path(run_path) if control is None else Path(run_path) / "controls" / control
    return base / f"level_{int(level):02d}"


def _completed(base: Path) -> tuple[int, ...]:
    if not base.is_dir():
        return ()
    out = []
    for d in base.iterdir():
        if d.is_dir() and d.name.startswith("level_") and d.name[6:].isdigit() \
                and (d / "metrics.json").is_file():
            out.append(int(d.name[6:]))
    return tuple(sorted(out))


def open_run(path: str | Path) -> RunInfo:
    """Read a run directory written by :func:`run_imp`. Raises :class:`RunError` if ``path``
    is not one (missing/corrupt run.json, unknown format)."""
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
    controls = {}
    cbase = path / "controls"
    if cbase.is_dir():
        for d in sorted(cbase.iterdir()):
            if d.is_dir():
                controls[d.name] = _completed(d)
    return RunInfo(path=path, meta=meta, levels=_completed(path), controls=controls)


def load_level(run_or_path: RunInfo | str | Path, level: int, *,
               control: str | None = None) -> LevelFiles:
    """Load a completed level (of the ticket, or of ``control``). Raises :class:`RunError` if
    the level is not complete or a file is missing/corrupt."""
    run = run_or_path if isinstance(run_or_path, RunInfo) else open_run(run_or_path)
    done = run.levels if control is None else run.controls.get(control, ())
    what = f"level {level}" + (f" of control {control!r}" if control else "")
    if control is not None and control not in run.controls:
        raise RunError(f"{run.path}: no control {control!r} (have: "
                       f"{', '.join(run.controls) or 'none'})")
    if level not in done:
        raise RunError(f"{run.path}: {what} is not complete (completed: "
                       f"{', '.join(map(str, done)) or 'none'})")
    d = level_dir(run.path, level, control)
    try:
        init, _ = load_checkpoint(d / "init.safetensors")
        final, _ = load_checkpoint(d / "final.safetensors")
        mask, _ = load_checkpoint(d / "mask.safetensors", check=False)
        metrics = load_json(d / "metrics.json")
    except CheckpointError as e:
        raise RunError(f"{what}: {e}") from e
    order = [k for k in run.meta.get("prunable", []) if k in mask]
    order += [k for k in mask if k not in order]
    return LevelFiles(level=int(level), init=init, final=final,
                      mask={k: mask[k].bool() for k in order}, metrics=metrics,
                      control=control, path=d)


def build_run_model(run: RunInfo | str | Path) -> nn.Module:
    """The zoo model of a run (architecture from run.json; weights are its seed's init)."""
    from tickets.store import model_from_meta
    run = run if isinstance(run, RunInfo) else open_run(run)
    try:
        return model_from_meta(run.meta, str(run.path / "run.json"), seed=run.meta.get("seed", 0))
    except CheckpointError as e:
        raise RunError(str(e)) from e


def load_run_data(run: RunInfo | str | Path, root=None) -> DataSplits:
    """The dataset a run was trained on (``root``: folder of the dataset files, default the
    one recorded in run.json)."""
    from tickets.data import load_dataset
    run = run if isinstance(run, RunInfo) else open_run(run)
    return load_dataset(run.meta["dataset"], root=root if root is not None else
                        run.meta.get("root"), seed=run.meta.get("dataset_seed", 0))


# --------------------------------------------------------------------------- helpers

def _derive_seed(*parts) -> int:
    """A reproducible 63-bit seed from ``parts`` (controls get seeds unrelated to user seeds)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _mask_digest(mask: Mapping[str, torch.Tensor] | None) -> str | None:
    if mask is None:
        return None
    h = hashlib.sha256()
    for k in sorted(mask):
        h.update(k.encode())
        h.update(mask[k].to(torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()


def _canon(obj):
    """JSON round-trip so tuples/lists and int/float compare as they do on disk."""
    import json
    return json.loads(json.dumps(obj, default=str))


def _first_difference(old, new, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            if k not in old or k not in new:
                return f"{prefix}{k}"
            sub = _first_difference(old[k], new[k], f"{prefix}{k}.")
            if sub:
                return sub
        return None
    return None if old == new else prefix.rstrip(".")


def check_imp_args(*, levels: int, fraction: float, strategy: str, rewind_iter: int,
                   total_iters: int, controls: Iterable[str] = ()) -> None:
    """Validate the IMP options (raises :class:`ConfigError` naming the bad one)."""
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 0:
        raise ConfigError(f"levels must be an integer >= 0, got {levels!r}")
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"pruning fraction must be in (0, 1), got {fraction}")
    if strategy not in P.STRATEGIES:
        raise ConfigError(f"pruning strategy must be one of {', '.join(P.STRATEGIES)}, got "
                          f"{strategy!r}")
    if not isinstance(rewind_iter, int) or rewind_iter < 0 or rewind_iter >= total_iters:
        raise ConfigError(f"rewind iteration must be in 0..{total_iters - 1} (training is "
                          f"{total_iters} iterations), got {rewind_iter}")
    for c in controls:
        if c not in CONTROLS:
            raise ConfigError(f"unknown control {c!r}; choose from {', '.join(CONTROLS)}")


def _meta_for(run_meta: dict, *, iteration: int, level: int, kind: str,
              control: str | None, seed: int, density: float) -> dict:
    """Standard checkpoint meta (see tickets.store) plus where the file sits in the run."""
    return {"model": run_meta["model"], "model_kwargs": run_meta["model_kwargs"],
            "num_classes": run_meta["num_classes"], "input_shape": run_meta["input_shape"],
            "dataset": run_meta["dataset"], "seed": seed, "data_seed": run_meta["data_seed"],
            "iteration": iteration, "train_config": run_meta["train_config"],
            "versions": run_meta["versions"], "imp": {"level": level, "kind": kind,
                                                     "control": control, "density": density,
                                                     "rewind_iter": run_meta["rewind_iter"]}}


def _summary_row(level: int, metrics: dict) -> dict:
    return {"level": level, "density": metrics["density"], "sparsity": metrics["sparsity"],
            "test_acc": metrics["test_acc"], "test_loss": metrics["test_loss"],
            "train_acc": metrics["train_acc"], "train_loss": metrics["train_loss"],
            "wall_time": metrics["wall_time"]}


# --------------------------------------------------------------------------- IMP

def run_imp(model_name: str, data: DataSplits, cfg: TrainConfig, *, levels: int,
            fraction: float | None = None, strategy: str | None = None, rewind_iter: int = 0,
            seed: int, data_seed: int | None = None, out_dir: str | Path,
            control: str | Iterable[str] | None = None, resume: bool = True,
            model_kwargs: Mapping[str, Any] | None = None,
            layer_fractions: Mapping[str, float] | None = None,
            ignore: Iterable[str] | None = None,
            mask: Mapping[str, torch.Tensor] | None = None,
            dataset_seed: int | None = None, root: str | Path | None = None,
            device: str | torch.device = "cpu", progress: bool = False,
            on_level: Callable[[dict], None] | None = None) -> ImpResult:
    """Find a lottery ticket by IMP with rewinding (see module docstring) into ``out_dir``.

    ``levels``: number of pruning rounds (levels ``0..levels``; 0 = dense only).
    ``fraction``/``strategy``/``layer_fractions``/``ignore``: pruning rule; ``None`` takes the
    paper defaults of :func:`default_pruning` (explicit ``layer_fractions`` and ``ignore``
    replace the defaults for the layers they name). ``rewind_iter``: iteration ``k`` the
    survivors are reset to. ``control``: ``"random_reinit"`` and/or ``"random_prune"``.
    ``mask``: a starting mask for level 0 (e.g. a transferred ticket). ``data_seed``: data
    order (default ``seed``). ``dataset_seed``/``root``: recorded so :func:`load_run_data`
    reloads the same data. ``on_level`` receives each summary row as it completes (with
    ``control`` set). Returns :class:`ImpResult`; raises ``ConfigError``/``RunError``/
    ``ModelError`` before writing anything on bad input.
    """
    from tickets.models import build_model

    t_start = time.perf_counter()
    out = Path(out_dir)
    data_seed = seed if data_seed is None else data_seed
    controls = ([control] if isinstance(control, str) else list(control or []))
    controls = list(dict.fromkeys(controls))
    model_kwargs = dict(model_kwargs or {})
    n_train = len(data.train)
    total = cfg.total_iters(n_train)

    # ---- validate everything before touching the disk
    for c in controls:
        if c not in CONTROLS:
            raise ConfigError(f"unknown control {c!r}; choose from {', '.join(CONTROLS)}")
    model = build_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape,
                        seed=seed, **model_kwargs)
    all_prunable = P.prunable(model)
    defaults = default_pruning(model_name, all_prunable, fraction, strategy)
    ignore_list = list(defaults["ignore"]) if ignore is None else [P._weight_name(n)
                                                                   for n in ignore]
    names = P.prunable(model, ignore=ignore_list)
    if not names:
        raise ConfigError("nothing to prune: every prunable weight is ignored")
    lf = {k: v for k, v in defaults["layer_fractions"].items() if k in names}
    if layer_fractions:
        if defaults["strategy"] == "global":
            raise ConfigError("per-layer fractions apply only to the layerwise strategy")
        lf.update({P._weight_name(k): float(v) for k, v in layer_fractions.items()})
        P._resolve_layer_fractions(names, defaults["fraction"], lf)  # validates keys, ranges
    check_imp_args(levels=levels, fraction=defaults["fraction"], strategy=defaults["strategy"],
                   rewind_iter=rewind_iter, total_iters=total, controls=controls)
    for k, v in lf.items():
        if not 0.0 < v < 1.0:
            raise ConfigError(f"layer fraction of {k!r} must be in (0, 1), got {v}")
    init_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_mask = (P.full_mask(init_params, names) if mask is None
                  else P.check_mask(init_params, mask, "starting mask", names=names))
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is a file, expected a run directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise RunError(f"{out}: cannot create the run directory: {parent} is a file")

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_name,
            "model_kwargs": model_kwargs, "num_classes": data.num_classes,
            "input_shape": list(data.input_shape), "dataset": data.name,
            "dataset_seed": seed if dataset_seed is None else int(dataset_seed),
            "root": None if root is None else str(root),
            "seed": int(seed), "data_seed": int(data_seed), "train_config": cfg.to_dict(),
            "total_iters": total, "iters_per_epoch": cfg.iters_per_epoch(n_train),
            "strategy": defaults["strategy"], "fraction": defaults["fraction"],
            "layer_fractions": lf, "ignore": ignore_list, "prunable": names,
            "rewind_iter": int(rewind_iter), "initial_mask": _mask_digest(mask),
            "levels": int(levels), "controls": controls,
            "control_seeds": "sha256(seed, control, level)", "versions": versions()}
    meta = _canon(meta)
    if (out / "run.json").exists():
        if not resume:
            raise RunError(f"{out}: already holds an IMP run; choose another directory")
        old = open_run(out).meta
        for key in _IDENTITY:
            if _canon(old.get(key)) != meta.get(key):
                sub = _first_difference(_canon(old.get(key)), meta.get(key), f"{key}.") or key
                raise RunError(f"{out}: holds a run with a different {sub} "
                               f"({_short(old.get(key), sub, key)} there, "
                               f"{_short(meta.get(key), sub, key)} now); use another --out")
        meta["levels"] = max(int(old.get("levels", 0)), int(levels))
        meta["controls"] = list(dict.fromkeys(list(old.get("controls", [])) + controls))
        meta["versions_first"] = old.get("versions_first", old.get("versions"))
    elif out.is_dir() and any(not (p.name.startswith(".") and p.name.endswith(".tmp"))
                              for p in out.iterdir()):
        # (a temp file left by a kill while run.json was first written does not count)
        raise RunError(f"{out}: directory is not empty and holds no IMP run (no run.json)")

    # ---- run
    save_json(out / "run.json", meta)
    resumed: list[str] = []
    computed: list[str] = []
    rows: dict[str | None, dict[int, dict]] = {None: {}}
    for c in meta["controls"]:
        rows[c] = {}

    def write_summary():
        summary = {"model": model_name, "dataset": data.name, "seed": seed,
                   "rewind_iter": rewind_iter, "strategy": meta["strategy"],
                   "levels": [rows[None][k] for k in sorted(rows[None])],
                   "controls": {c: [rows[c][k] for k in sorted(rows[c])]
                                for c in meta["controls"]}}
        save_json(out / "summary.json", summary)

    def run_level(level: int, ctrl: str | None, start: dict, level_mask: dict, start_iter: int,
                  weight_seed: int, keep_rewind: bool) -> tuple[dict, dict | None]:
        """Train one level and write its files; returns (final params, rewind params)."""
        d = level_dir(out, level, ctrl)
        sp = P.sparsity(level_mask)
        net = build_model(model_name, num_classes=data.num_classes,
                          input_shape=data.input_shape, seed=seed, **model_kwargs)
        net.load_state_dict(start)
        tag = f"level {level}/{levels}" + (f" {ctrl}" if ctrl else "")
        res = train(net, data, cfg, seed=weight_seed, data_seed=data_seed, mask=level_mask,
                    start_iter=start_iter,
                    checkpoints_at=(rewind_iter,) if keep_rewind else (), device=device,
                    progress=progress, desc=tag)
        if res.nonfinite:
            raise RunError(f"{tag}: training diverged (non-finite loss at iteration "
                           f"{res.iters}); earlier levels are kept; try a smaller lr")
        rewind = res.checkpoints.get(rewind_iter) if keep_rewind else None
        init_to_save = rewind if (keep_rewind and rewind_iter > 0) else start
        common = dict(level=level, control=ctrl, seed=weight_seed, density=sp.density)
        save_checkpoint(d / "init.safetensors", init_to_save,
                        _meta_for(meta, iteration=start_iter if not keep_rewind else rewind_iter,
                                  kind="init", **common))
        save_checkpoint(d / "final.safetensors", res.params,
                        _meta_for(meta, iteration=res.iters, kind="final", **common))
        save_checkpoint(d / "mask.safetensors", level_mask,
                        _meta_for(meta, iteration=start_iter, kind="mask", **common))
        metrics = {"level": level, "control": ctrl, **sp.to_dict(), "rewind_iter": rewind_iter,
                   "start_iter": start_iter, "weight_seed": weight_seed,
                   "device": str(device), **res.metrics()}
        save_json(d / "metrics.json", metrics)  # last: marks the level complete
        return res.params, rewind

    def load_done(level: int, ctrl: str | None):
        files = load_level(RunInfo(out, meta, _completed(out),
                                   {c: _completed(out / "controls" / c)
                                    for c in meta["controls"]}), level, control=ctrl)
        return files

    def record(level: int, ctrl: str | None, metrics: dict, was_resumed: bool):
        row = _summary_row(level, metrics)
        rows[ctrl][level] = row
        name = f"{ctrl or 'ticket'}:{level}"
        (resumed if was_resumed else computed).append(name)
        write_summary()
        if on_level is not None:
            on_level({**row, "control": ctrl, "resumed": was_resumed})

    # Completed levels are only read back when a later level needs them (lazily), so resuming
    # a long run costs one level's files, not all of them.
    done = set(_completed(out))
    done_controls = {c: set(_completed(out / "controls" / c)) for c in meta["controls"]}
    cache: dict[str, Any] = {}

    def ticket_state(level: int) -> tuple[dict, dict]:
        """(final params, mask) of ticket level ``level``, from memory or disk."""
        if cache.get("level") != level:
            files = load_done(level, None)
            cache.update(level=level, final=files.final, mask=files.mask)
        return cache["final"], cache["mask"]

    def rewind_state() -> dict:
        if "rewind" not in cache:
            cache["rewind"] = load_done(0, None).init
        return cache["rewind"]

    for level in range(levels + 1):
        if level in done:
            record(level, None, load_json(level_dir(out, level) / "metrics.json"), True)
        else:
            if level == 0:
                level_mask = start_mask
                start = P.apply_mask(init_params, level_mask)
                final, rw = run_level(0, None, start, level_mask, 0, seed, keep_rewind=True)
                cache["rewind"] = rw if rewind_iter > 0 else start
            else:
                prev_final, prev_mask = ticket_state(level - 1)
                level_mask = P.prune(meta["strategy"], prev_final, prev_mask, meta["fraction"],
                                     layer_fractions=lf or None)
                start = P.apply_mask(rewind_state(), level_mask)
                final, _ = run_level(level, None, start, level_mask, rewind_iter, seed,
                                     keep_rewind=False)
            cache.update(level=level, final=final, mask=level_mask)
            record(level, None, load_json(level_dir(out, level) / "metrics.json"), False)

        if level == 0:
            continue
        for ctrl in meta["controls"]:
            if level in done_controls[ctrl]:
                record(level, ctrl, load_json(level_dir(out, level, ctrl) / "metrics.json"),
                       True)
                continue
            cseed = _derive_seed(seed, ctrl, level)
            _, level_mask = ticket_state(level)
            if ctrl == "random_reinit":
                fresh = build_model(model_name, num_classes=data.num_classes,
                                    input_shape=data.input_shape, seed=cseed,
                                    **model_kwargs).state_dict()
                cmask = level_mask
                cstart = P.apply_mask(fresh, cmask)
            else:  # random_prune
                cmask = P.random(level_mask, seed=cseed, per_layer=True)
                cstart = P.apply_mask(rewind_state(), cmask)
            run_level(level, ctrl, cstart, cmask, rewind_iter, cseed, keep_rewind=False)
            record(level, ctrl, load_json(level_dir(out, level, ctrl) / "metrics.json"), False)

    write_summary()
    return ImpResult(path=out, levels=tuple(rows[None][k] for k in sorted(rows[None])),
                     controls={c: tuple(rows[c][k] for k in sorted(rows[c]))
                               for c in meta["controls"]},
                     resumed=tuple(resumed), computed=tuple(computed),
                     wall_time=time.perf_counter() - t_start)


def _short(value, sub: str, key: str) -> str:
    """The differing value for the refusal message (the sub-field when nested), shortened."""
    v = value
    for part in sub.split(".")[1:] if "." in sub else []:
        v = v.get(part) if isinstance(v, dict) else v
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
