"""Iterative magnitude pruning (IMP) with rewinding, its controls, and resumable runs.

Algorithm (Frankle & Carbin 2019; late rewinding: Frankle, Dziugaite, Roy & Carbin 2019/2020):

* Level 0 trains the dense network (or the network under a given starting mask) from its init
  ``theta_0`` for ``T`` iterations and keeps the weights ``theta_k`` at the rewind iteration
  ``k`` (``k = 0``: the original lottery ticket reset to init; ``k > 0``: late rewinding).
* Level ``L >= 1`` prunes the level ``L-1`` final weights (:mod:`tickets.prune`, magnitude,
  global or layerwise), resets the survivors to ``theta_k`` (``m_L * theta_k``) and retrains
  them from iteration ``k`` to ``T`` with the same schedule and data order (fast-forwarded: the
  learning rate and batch order are those of the absolute iteration; optimiser state fresh, as
  OpenLTH does).
* Schedule: each level removes ``fraction`` of the survivors, or with ``sparsities``
  ``s_1 < s_2 < ...`` level ``L`` keeps exactly ``N - ceil(s_L * N)`` of the ``N`` prunable
  entries (per tensor for layerwise; :func:`tickets.prune.remaining_after`). ``prune`` says
  what is prunable: Linear/Conv weights, plus their biases, or every parameter
  (:func:`tickets.prune.prunable`).
* Pruning at initialization (Frankle et al. 2021): with a ``strategy`` of
  :data:`tickets.scores.SCORES` (SNIP, GraSP, SynFlow, magnitude or random at init), level 0
  is the same dense network and level ``L`` is found in one shot from the starting mask at the
  rewind weights ``theta_k`` (``theta_0`` for ``k = 0``, i.e. before any training) to the
  survivor count of level ``L`` of the schedule, then trained as above. Levels do not depend on
  each other.
* Controls, as OpenLTH branches, at every level ``L >= 1``: ``random_reinit`` keeps the mask
  ``m_L`` but draws fresh weights from another seed (Frankle & Carbin's "reinit" control);
  ``random_prune`` keeps the rewound weights ``theta_k`` under a random mask with the same
  per-layer survivor counts as ``m_L``. Both train from iteration ``k`` exactly as the ticket.
  They are Frankle et al. (2021)'s ablations "reinitialise" and "shuffle each layer's mask"
  (a uniformly random mask with the same per-layer counts). ``inverted`` prunes by the
  negated scores of the run's strategy from the point level ``L`` was pruned from (the
  inversion ablation). Every name of :data:`tickets.scores.SCORES` is a control too: that
  score's mask at init with exactly the ticket's survivor count at level ``L``.

A run is described by one frozen :class:`ImpConfig` (OpenLTH's ``LotteryDesc``), written to
run.json; the directory layout is :mod:`tickets.runs`. A run killed at any moment and started
again with the same arguments redoes only the unfinished level and gives bit-identical results
(training is a pure function of its inputs; see :mod:`tickets.train`). A different
configuration is refused (:class:`RunError` naming the first differing field); more levels or
more controls extend a run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from tickets import prune as P
from tickets import scores as S
from tickets.data import DataSplits
from tickets.errors import ConfigError, RunError
from tickets.runs import (FORMAT, FORMAT_VERSION, LAST_FILE, completed_levels, level_dir,
                          load_level, open_run)
from tickets.store import load_json, save_checkpoint, save_json, versions
from tickets.train import TrainConfig, train

__all__ = ["run_imp", "ImpConfig", "ImpResult", "default_pruning", "check_imp_args", "CONTROLS",
           "ALL_STRATEGIES"]

#: Control branches :func:`run_imp` can add: OpenLTH's randomly_reinitialize / randomly_prune,
#: the score inversion of Frankle et al. (2021) and every pruning-at-initialization score.
CONTROLS = ("random_reinit", "random_prune", "inverted", *S.SCORES)

#: Every ``strategy``: magnitude pruning of the trained weights, or a score at init.
ALL_STRATEGIES = (*P.STRATEGIES, *S.SCORES)


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
    ``strategy`` other than ``"layerwise"`` (global, or a score at init) drops per-layer rates.
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
    if strat != "layerwise":
        layer_fractions = {}
    else:
        layer_fractions = {n: frac * r for n, r in ratios.items() if n is not None and
                           n not in ignore}
    return {"strategy": strat, "fraction": frac, "layer_fractions": layer_fractions,
            "ignore": ignore}


# --------------------------------------------------------------------------- configuration

def _informative(**kw):
    """A field recorded in run.json that a resumed run need not match."""
    return field(compare=False, **kw)


@dataclass(frozen=True, kw_only=True)
class ImpConfig:
    """The identity of an IMP run (OpenLTH's ``LotteryDesc``): model, data, seeds, training
    and pruning rule. :meth:`to_dict` is run.json without the bookkeeping keys; a resumed run
    must equal the stored one in every field except the informative ``root``, ``total_iters``
    and ``iters_per_epoch``. ``initial_mask`` is the SHA-256 of the starting mask (or None).
    ``sparsities`` (empty: ``fraction`` per level) is the schedule, ``prune`` what is prunable
    (:data:`tickets.prune.KINDS`), ``score_examples`` the first training examples a score at
    init reads. A run.json without a field that has a default holds that default.
    Build one with :meth:`build` (paper defaults filled in, every option checked)."""

    format_version: int = FORMAT_VERSION
    model: str  # a model source (tickets.sources): zoo name, pkg.module:factory, file.py:factory
    model_kwargs: dict = field(default_factory=dict)
    num_classes: int
    input_shape: tuple[int, ...]
    dataset: str
    dataset_seed: int
    root: str | None = _informative(default=None)
    seed: int
    data_seed: int
    train_config: TrainConfig
    total_iters: int = _informative()
    iters_per_epoch: int = _informative()
    strategy: str
    fraction: float
    sparsities: tuple[float, ...] = ()
    prune: str = "weights"
    score_examples: int = 100
    layer_fractions: dict = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    prunable: tuple[str, ...]
    rewind_iter: int = 0
    initial_mask: str | None = None

    @classmethod
    def build(cls, model_name: str | Callable[..., nn.Module], data: DataSplits,
              cfg: TrainConfig, *, seed: int,
              fraction: float | None = None, strategy: str | None = None,
              rewind_iter: int = 0, data_seed: int | None = None,
              model_kwargs: Mapping[str, Any] | None = None,
              layer_fractions: Mapping[str, float] | None = None,
              ignore: Iterable[str] | None = None,
              mask: Mapping[str, torch.Tensor] | None = None,
              dataset_seed: int | None = None, root: str | Path | None = None,
              sparsities: Iterable[float] | None = None, prune: str | None = None,
              score_examples: int | None = None) -> ImpConfig:
        """The config of IMP on model ``model_name`` and ``data`` (options as in
        :func:`run_imp`; ``None`` takes :func:`default_pruning`). ``model_name`` is a model
        source (:func:`tickets.sources.source_spec`), recorded in its canonical form so that
        the run directory rebuilds the model. Raises ``ConfigError``/``ModelError`` naming the
        bad option."""
        from tickets.sources import resolve_model, source_spec
        model_name = source_spec(model_name)
        model_kwargs = dict(model_kwargs or {})
        model = resolve_model(model_name, kwargs=model_kwargs, num_classes=data.num_classes,
                              input_shape=data.input_shape, seed=seed)
        rule = _pruning_rule(model_name, model, fraction, strategy, layer_fractions, ignore,
                             sparsities, prune or "weights")
        n_train = len(data.train)
        total = cfg.total_iters(n_train)
        _check_rule(rule["fraction"], rule["strategy"], rewind_iter, total)
        n_score = 100 if score_examples is None else score_examples
        if not isinstance(n_score, int) or isinstance(n_score, bool) or not 1 <= n_score:
            raise ConfigError(f"score_examples must be a positive integer, got {n_score!r}")
        rule["score_examples"] = min(n_score, n_train)
        return cls(model=model_name, model_kwargs=model_kwargs, num_classes=data.num_classes,
                   input_shape=tuple(data.input_shape), dataset=data.name,
                   dataset_seed=seed if dataset_seed is None else int(dataset_seed),
                   root=None if root is None else str(root), seed=int(seed),
                   data_seed=int(seed if data_seed is None else data_seed), train_config=cfg,
                   total_iters=total, iters_per_epoch=cfg.iters_per_epoch(n_train),
                   rewind_iter=int(rewind_iter), initial_mask=_mask_digest(mask), **rule)

    def to_dict(self) -> dict:
        """The fields as run.json stores them (JSON types, in field order)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["train_config"] = self.train_config.to_dict()
        return _canon(out)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImpConfig:
        """The config of a run.json (extra keys ignored). Raises :class:`RunError` if a field
        is missing."""
        missing = [f.name for f in fields(cls) if f.name not in d and f.name != "root"
                   and f.name not in _LATER_FIELDS]
        if missing:
            raise RunError(f"run.json: no {missing[0]!r}: not written by this toolkit")
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw.update(train_config=TrainConfig.from_dict(d["train_config"]),
                  input_shape=tuple(d["input_shape"]), ignore=tuple(d["ignore"]),
                  prunable=tuple(d["prunable"]), sparsities=tuple(d.get("sparsities", ())))
        return cls(**kw)

    def difference(self, stored: Mapping[str, Any]) -> str | None:
        """The first identity field (dotted into nested dicts, e.g. ``train_config.lr``) in which
        the run.json ``stored`` differs from this config; ``None`` if it is the same run."""
        mine = self.to_dict()
        for f in fields(self):
            old = _canon(stored.get(f.name, _LATER_FIELDS.get(f.name)))
            if f.compare and old != mine[f.name]:
                return _first_difference(old, mine[f.name], f"{f.name}.") or f.name
        return None

    def build_model(self, seed: int | None = None) -> nn.Module:
        """The run's model, initialised from ``seed`` (default the run's seed)."""
        from tickets.sources import resolve_model
        return resolve_model(self.model, kwargs=self.model_kwargs, num_classes=self.num_classes,
                             input_shape=self.input_shape,
                             seed=self.seed if seed is None else seed)


#: Fields added to run.json after its first version, with the value an older run.json means.
_LATER_FIELDS = {"sparsities": [], "prune": "weights", "score_examples": 100}


def _pruning_rule(model_name: str, model: nn.Module, fraction, strategy, layer_fractions,
                  ignore, sparsities, kind: str) -> dict[str, Any]:
    """``strategy``, ``fraction``, ``sparsities``, ``prune``, ``layer_fractions``, ``ignore``
    and ``prunable`` of a run: the user's choices over :func:`default_pruning`."""
    if strategy is not None:
        _check_strategy(strategy)
    schedule = () if sparsities is None else P.check_sparsities(sparsities)
    if schedule and fraction is not None:
        raise ConfigError("give a pruning fraction per level or a sparsity schedule, not both")
    defaults = default_pruning(model_name, P.prunable(model), fraction, strategy)
    ignore_list = (list(defaults["ignore"]) if ignore is None
                   else [P.weight_name(n) for n in ignore])
    names = P.prunable(model, ignore=ignore_list, kind=kind)
    if not names:
        raise ConfigError("nothing to prune: every prunable weight is ignored")
    lf = {k: v for k, v in defaults["layer_fractions"].items() if k in names}
    if schedule:
        lf = {}
    if layer_fractions:
        if defaults["strategy"] != "layerwise" or schedule:
            raise ConfigError("per-layer fractions apply only to the layerwise strategy with a "
                              "fixed fraction per level")
        lf.update({P.weight_name(k): float(v) for k, v in layer_fractions.items()})
    P.resolve_layer_fractions(names, defaults["fraction"], lf)  # validates keys and ranges
    if schedule:
        sizes = dict(model.state_dict())
        groups = ({n: sizes[n].numel() for n in names} if defaults["strategy"] == "layerwise"
                  else {"the prunable weights": sum(sizes[n].numel() for n in names)})
        for what, total in groups.items():
            if P.remaining_after(len(schedule), total, sparsities=schedule) == 0:
                raise ConfigError(f"sparsity schedule leaves nothing: {schedule[-1]} of "
                                  f"{what} ({total} entries) keeps none")
    return {"strategy": defaults["strategy"], "fraction": defaults["fraction"],
            "sparsities": schedule, "prune": kind, "layer_fractions": lf,
            "ignore": tuple(ignore_list), "prunable": tuple(names)}


def _check_strategy(strategy: str) -> None:
    if strategy not in ALL_STRATEGIES:
        raise ConfigError(f"pruning strategy must be one of {', '.join(ALL_STRATEGIES)}, got "
                          f"{strategy!r}")


def _check_rule(fraction: float, strategy: str, rewind_iter: int, total_iters: int) -> None:
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"pruning fraction must be in (0, 1), got {fraction}")
    _check_strategy(strategy)
    if not isinstance(rewind_iter, int) or rewind_iter < 0 or rewind_iter >= total_iters:
        raise ConfigError(f"rewind iteration must be in 0..{total_iters - 1} (training is "
                          f"{total_iters} iterations), got {rewind_iter}")


def check_imp_args(*, levels: int, fraction: float, strategy: str, rewind_iter: int,
                   total_iters: int, controls: Iterable[str] = (),
                   sparsities: Iterable[float] = ()) -> None:
    """Validate the IMP options (raises :class:`ConfigError` naming the bad one)."""
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 0:
        raise ConfigError(f"levels must be an integer >= 0, got {levels!r}")
    schedule = tuple(sparsities)
    if schedule and levels > len(schedule):
        raise ConfigError(f"levels {levels} is beyond the sparsity schedule ({len(schedule)} "
                          f"sparsities)")
    _check_rule(fraction, strategy, rewind_iter, total_iters)
    for c in controls:
        if c not in CONTROLS:
            raise ConfigError(f"unknown control {c!r}; choose from {', '.join(CONTROLS)}")


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


# --------------------------------------------------------------------------- IMP

def run_imp(model_name: str | Callable[..., nn.Module] | ImpConfig, data: DataSplits,
            cfg: TrainConfig | None = None, *,
            levels: int, fraction: float | None = None, strategy: str | None = None,
            rewind_iter: int = 0, seed: int | None = None, data_seed: int | None = None,
            out_dir: str | Path, control: str | Iterable[str] | None = None,
            resume: bool = True, model_kwargs: Mapping[str, Any] | None = None,
            layer_fractions: Mapping[str, float] | None = None,
            ignore: Iterable[str] | None = None,
            mask: Mapping[str, torch.Tensor] | None = None,
            dataset_seed: int | None = None, root: str | Path | None = None,
            sparsities: Iterable[float] | None = None, prune: str | None = None,
            score_examples: int | None = None,
            device: str | torch.device = "cpu", progress: bool = False,
            on_level: Callable[[dict], None] | None = None) -> ImpResult:
    """Find a lottery ticket by IMP with rewinding (see module docstring) into ``out_dir``.

    ``model_name``: a model source (a zoo name, ``pkg.module:factory``,
    ``path/to/file.py:factory``, ...; see :mod:`tickets.sources`), an importable factory (a
    class or function, recorded as ``module:qualname``), or an :class:`ImpConfig` (then
    ``cfg``, ``seed`` and the pruning options come from it and must be left out). Models that
    are not in the zoo are pruned with the global rule (20%, output layer kept). ``levels``: number of pruning rounds
    (levels ``0..levels``; 0 = dense only). ``fraction``/``strategy``/``layer_fractions``/
    ``ignore``: pruning rule; ``None`` takes the paper defaults of :func:`default_pruning`
    (explicit ``layer_fractions`` and ``ignore`` replace the defaults for the layers they
    name). ``sparsities``: a schedule ``s_1 < s_2 < ...`` instead of ``fraction`` (``levels``
    at most its length); ``prune``: ``"weights"`` (default), ``"weights+biases"`` or ``"all"``;
    ``strategy`` may be a score at init (:data:`tickets.scores.SCORES`; ``score_examples``:
    the first training examples it reads, default 100). ``rewind_iter``: iteration ``k`` the
    survivors are reset to. ``control``: any of :data:`CONTROLS`. ``mask``: a starting mask
    for level 0 (e.g. a transferred ticket). ``data_seed``: data order (default ``seed``).
    ``dataset_seed``/``root``: recorded so :func:`tickets.runs.load_run_data` reloads the same data.
    ``on_level`` receives each summary row as it completes (with ``control`` set). Returns
    :class:`ImpResult`; raises ``ConfigError``/``RunError``/``ModelError`` before writing
    anything on bad input.
    """
    t_start = time.perf_counter()
    controls = list(dict.fromkeys([control] if isinstance(control, str) else list(control or [])))
    options = dict(seed=seed, fraction=fraction, strategy=strategy, rewind_iter=rewind_iter,
                   data_seed=data_seed, model_kwargs=model_kwargs,
                   layer_fractions=layer_fractions, ignore=ignore, dataset_seed=dataset_seed,
                   root=root, sparsities=sparsities, prune=prune, score_examples=score_examples)
    if isinstance(model_name, ImpConfig):
        config = _given_config(model_name, data, cfg=cfg, **options)
    elif cfg is None or seed is None:
        raise ConfigError("run_imp needs a TrainConfig and a seed (or an ImpConfig)")
    else:
        config = ImpConfig.build(model_name, data, cfg, mask=mask, **options)
    check_imp_args(levels=levels, fraction=config.fraction, strategy=config.strategy,
                   rewind_iter=config.rewind_iter, total_iters=config.total_iters,
                   controls=controls, sparsities=config.sparsities)
    init_params, start_mask = _start(config, mask)
    out = Path(out_dir)
    meta = _prepare(out, config, levels, controls, resume)
    imp = _Imp(out, config, meta, data, start_mask, levels=levels, device=device,
               progress=progress, on_level=on_level)
    for level in range(levels + 1):
        imp.ticket(level, init_params)
        if level > 0:
            for ctrl in meta["controls"]:
                imp.control(level, ctrl)
    imp.write_summary()
    return imp.result(time.perf_counter() - t_start)


def _given_config(config: ImpConfig, data: DataSplits, **options) -> ImpConfig:
    """``config``, checked against ``data``; the options it fixes must be left out."""
    given = [k for k, v in options.items() if v is not None and (k != "rewind_iter" or v != 0)]
    if given:
        raise ConfigError(f"run_imp: {given[0]} is part of the ImpConfig; do not pass it too")
    found = (data.name, data.num_classes, tuple(data.input_shape),
             config.train_config.total_iters(len(data.train)))
    wanted = (config.dataset, config.num_classes, config.input_shape, config.total_iters)
    if found != wanted:
        raise ConfigError(f"the data ({found[0]}, {found[1]} classes, input {found[2]}, "
                          f"{found[3]} iterations) is not the ImpConfig's ({wanted[0]}, "
                          f"{wanted[1]} classes, input {wanted[2]}, {wanted[3]} iterations)")
    return config


def _start(config: ImpConfig, mask) -> tuple[dict, P.Mask]:
    """The init ``theta_0`` of the run's seed and the level-0 mask (checked)."""
    init = {k: v.detach().clone() for k, v in config.build_model().state_dict().items()}
    if mask is None and config.initial_mask is None:
        return init, P.full_mask(init, config.prunable)
    if mask is None or _mask_digest(mask) != config.initial_mask:
        raise ConfigError("the starting mask is not the one the ImpConfig names "
                          "(initial_mask); pass that mask as mask=")
    return init, P.check_mask(init, mask, "starting mask", names=config.prunable)


def _prepare(out: Path, config: ImpConfig, levels: int, controls: list[str],
             resume: bool) -> dict:
    """Write run.json for a new run, or check that ``out`` holds the same run and extend its
    levels and controls. Returns the run.json dict."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is a file, expected a run directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise RunError(f"{out}: cannot create the run directory: {parent} is a file")
    meta = _canon({"format": FORMAT, **config.to_dict(), "levels": int(levels),
                   "controls": controls, "control_seeds": "sha256(seed, control, level)",
                   "versions": versions()})
    if (out / "run.json").exists():
        if not resume:
            raise RunError(f"{out}: already holds an IMP run; choose another directory")
        old = open_run(out).meta
        sub = config.difference(old)
        if sub is not None:
            key = sub.split(".")[0]
            raise RunError(f"{out}: holds a run with a different {sub} "
                           f"({_short(old.get(key), sub)} there, "
                           f"{_short(meta.get(key), sub)} now); use another --out")
        meta["levels"] = max(int(old.get("levels", 0)), int(levels))
        meta["controls"] = list(dict.fromkeys(list(old.get("controls", [])) + controls))
        meta["versions_first"] = old.get("versions_first", old.get("versions"))
    elif out.is_dir() and any(not (p.name.startswith(".") and p.name.endswith(".tmp"))
                              for p in out.iterdir()):
        # a temp file left by a kill while run.json was first written does not count
        raise RunError(f"{out}: directory is not empty and holds no IMP run (no run.json)")
    save_json(out / "run.json", meta)
    return meta


class _Imp:
    """The levels of one run: trains what is missing, reads back what is complete, and keeps
    the summary. Completed levels are only read back when a later level needs them, so
    resuming a long run costs one level's files, not all of them."""

    def __init__(self, out: Path, config: ImpConfig, meta: dict, data: DataSplits,
                 start_mask: P.Mask, *, levels: int, device, progress: bool,
                 on_level: Callable[[dict], None] | None):
        self.out, self.config, self.meta, self.data, self.levels = out, config, meta, data, levels
        self.start_mask = start_mask
        self.device, self.progress, self.on_level = device, progress, on_level
        self.done = {None: set(completed_levels(out))}
        self.done.update({c: set(completed_levels(out / "controls" / c))
                          for c in meta["controls"]})
        self.rows: dict[str | None, dict[int, dict]] = {c: {} for c in self.done}
        self.resumed: list[str] = []
        self.computed: list[str] = []
        self.cache: dict[str, Any] = {}

    def ticket(self, level: int, init_params: dict) -> None:
        """Ticket level ``level``: level 0 trains from ``start_mask * theta_0`` and keeps the
        rewind point; later levels prune (the previous level, or at init) and rewind."""
        if level in self.done[None]:
            self._record(level, None, resumed=True)
            return
        if level == 0:
            start_mask = self.start_mask
            start = P.apply_mask(init_params, start_mask)
            final, rewind = self._train(0, None, start, start_mask, 0, self.config.seed,
                                        keep_rewind=True)
            self.cache["rewind"] = rewind if self.config.rewind_iter > 0 else start
            level_mask = start_mask
        else:
            level_mask = self._level_mask(level, seed=_derive_seed(self.config.seed,
                                                                   self.config.strategy, level))
            start = P.apply_mask(self._rewind_state(), level_mask)
            final, _ = self._train(level, None, start, level_mask, self.config.rewind_iter,
                                   self.config.seed, keep_rewind=False)
        self.cache.update(level=level, final=final, mask=level_mask)
        self._record(level, None, resumed=False)

    def control(self, level: int, ctrl: str) -> None:
        """Control ``ctrl`` at ticket level ``level`` (seed derived from seed, ctrl, level)."""
        if level in self.done[ctrl]:
            self._record(level, ctrl, resumed=True)
            return
        cseed = _derive_seed(self.config.seed, ctrl, level)
        _, level_mask = self._ticket_state(level)
        if ctrl == "random_reinit":
            cmask = level_mask
            cstart = P.apply_mask(self.config.build_model(cseed).state_dict(), cmask)
        else:
            if ctrl == "random_prune":
                cmask = P.random(level_mask, seed=cseed, per_layer=True)
            elif ctrl == "inverted":
                cmask = self._level_mask(level, seed=cseed, invert=True)
            else:  # a score at init, to the ticket's survivor count
                cmask = self._init_mask(ctrl, P.sparsity(level_mask).remaining, seed=cseed)
            cstart = P.apply_mask(self._rewind_state(), cmask)
        self._train(level, ctrl, cstart, cmask, self.config.rewind_iter, cseed,
                    keep_rewind=False)
        self._record(level, ctrl, resumed=False)

    def _level_mask(self, level: int, *, seed: int, invert: bool = False) -> P.Mask:
        """The mask of ticket level ``level >= 1`` by the run's strategy (``invert``: by its
        negated scores): magnitude pruning of level ``level - 1``, or a score at init."""
        c = self.config
        if c.strategy in P.STRATEGIES:
            prev_final, prev_mask = self._ticket_state(level - 1)
            return P.prune(c.strategy, prev_final, prev_mask, c.fraction,
                           layer_fractions=c.layer_fractions or None,
                           sparsity=c.sparsities[level - 1] if c.sparsities else None,
                           invert=invert)
        total = sum(m.numel() for m in self.start_mask.values())
        keep = P.remaining_after(level, total, fraction=c.fraction, sparsities=c.sparsities)
        return self._init_mask(c.strategy, keep, seed=seed, invert=invert)

    def _init_mask(self, name: str, keep: int, *, seed: int, invert: bool = False) -> P.Mask:
        """Score ``name`` at the rewind weights, one shot from the starting mask, ``keep``
        survivors (all of them if the starting mask has fewer)."""
        alive = P.sparsity(self.start_mask).remaining
        batch = None
        if S.score(name).needs_data:
            n = self.config.score_examples
            train = self.data.train
            if hasattr(train, "tensors"):
                batch = (train.tensors[0][:n], train.tensors[1][:n])
            else:
                batch = tuple(torch.utils.data.default_collate([train[i] for i in range(n)]))
        return S.prune_at_init(name, self.config.build_model(), self._rewind_state(),
                               self.start_mask, min(keep, alive), batch,
                               input_shape=self.config.input_shape, invert=invert, seed=seed,
                               device=self.device)

    def _ticket_state(self, level: int) -> tuple[dict, dict]:
        """(final params, mask) of ticket level ``level``, from memory or disk."""
        if self.cache.get("level") != level:
            files = load_level(self.out, level)
            self.cache.update(level=level, final=files.final, mask=files.mask)
        return self.cache["final"], self.cache["mask"]

    def _rewind_state(self) -> dict:
        """``theta_k``: the weights every pruned level is reset to."""
        if "rewind" not in self.cache:
            self.cache["rewind"] = load_level(self.out, 0).init
        return self.cache["rewind"]

    def _train(self, level: int, ctrl: str | None, start: dict, level_mask: dict,
               start_iter: int, weight_seed: int, keep_rewind: bool) -> tuple[dict, dict | None]:
        """Train one level and write its files, metrics.json last; returns (final params,
        rewind params)."""
        rewind_iter = self.config.rewind_iter
        net = self.config.build_model()
        net.load_state_dict(start)
        tag = f"level {level}/{self.levels}" + (f" {ctrl}" if ctrl else "")
        res = train(net, self.data, self.config.train_config, seed=weight_seed,
                    data_seed=self.config.data_seed, mask=level_mask, start_iter=start_iter,
                    checkpoints_at=(rewind_iter,) if keep_rewind else (), device=self.device,
                    progress=self.progress, desc=tag)
        if res.nonfinite:
            raise RunError(f"{tag}: training diverged (non-finite loss at iteration "
                           f"{res.iters}); earlier levels are kept; try a smaller lr")
        rewind = res.checkpoints.get(rewind_iter) if keep_rewind else None
        sp = P.sparsity(level_mask)
        where = dict(level=level, control=ctrl, seed=weight_seed, density=sp.density)
        d = level_dir(self.out, level, ctrl)
        save_checkpoint(d / "init.safetensors", rewind if (keep_rewind and rewind_iter > 0)
                        else start, self._checkpoint_meta(
                            iteration=rewind_iter if keep_rewind else start_iter, kind="init",
                            **where))
        save_checkpoint(d / "final.safetensors", res.params,
                        self._checkpoint_meta(iteration=res.iters, kind="final", **where))
        save_checkpoint(d / "mask.safetensors", level_mask,
                        self._checkpoint_meta(iteration=start_iter, kind="mask", **where))
        save_json(d / LAST_FILE, {"level": level, "control": ctrl, **sp.to_dict(),
                                  "rewind_iter": rewind_iter, "start_iter": start_iter,
                                  "weight_seed": weight_seed, "device": str(self.device),
                                  **res.metrics()})
        return res.params, rewind

    def _checkpoint_meta(self, *, iteration: int, level: int, kind: str, control: str | None,
                         seed: int, density: float) -> dict:
        """Standard checkpoint meta (see tickets.store) plus where the file sits in the run."""
        m = self.meta
        return {"model": m["model"], "model_kwargs": m["model_kwargs"],
                "num_classes": m["num_classes"], "input_shape": m["input_shape"],
                "dataset": m["dataset"], "seed": seed, "data_seed": m["data_seed"],
                "iteration": iteration, "train_config": m["train_config"],
                "versions": m["versions"], "imp": {"level": level, "kind": kind,
                                                   "control": control, "density": density,
                                                   "rewind_iter": m["rewind_iter"]}}

    def _record(self, level: int, ctrl: str | None, *, resumed: bool) -> None:
        metrics = load_json(level_dir(self.out, level, ctrl) / LAST_FILE)
        row = {k: metrics[k] for k in ("density", "sparsity", "test_acc", "test_loss",
                                       "train_acc", "train_loss", "wall_time")}
        row = {"level": level, **row, "layer_density": {
            n: v["density"] for n, v in metrics.get("per_layer", {}).items()}}
        self.rows[ctrl][level] = row
        (self.resumed if resumed else self.computed).append(f"{ctrl or 'ticket'}:{level}")
        self.write_summary()
        if self.on_level is not None:
            self.on_level({**row, "control": ctrl, "resumed": resumed})

    def _rows(self, ctrl: str | None) -> list[dict]:
        return [self.rows[ctrl][k] for k in sorted(self.rows[ctrl])]

    def write_summary(self) -> None:
        """summary.json: one row per completed level of the ticket and of each control."""
        c = self.config
        save_json(self.out / "summary.json",
                  {"model": c.model, "dataset": c.dataset, "seed": c.seed,
                   "rewind_iter": c.rewind_iter, "strategy": c.strategy,
                   "sparsities": list(c.sparsities), "prune": c.prune,
                   "levels": self._rows(None),
                   "controls": {k: self._rows(k) for k in self.meta["controls"]}})

    def result(self, wall_time: float) -> ImpResult:
        return ImpResult(path=self.out, levels=tuple(self._rows(None)),
                         controls={k: tuple(self._rows(k)) for k in self.meta["controls"]},
                         resumed=tuple(self.resumed), computed=tuple(self.computed),
                         wall_time=wall_time)


# --------------------------------------------------------------------------- helpers

def _derive_seed(*parts) -> int:
    """A reproducible 63-bit seed from ``parts`` (controls get seeds unrelated to user seeds)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _mask_digest(mask: Mapping[str, torch.Tensor] | None) -> str | None:
    """SHA-256 of a starting mask (keys in order and their 0/1 bytes): its identity in run.json."""
    if mask is None:
        return None
    h = hashlib.sha256()
    for k in sorted(mask):
        h.update(k.encode())
        h.update(mask[k].to(torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()


def _canon(obj):
    """JSON round-trip so tuples/lists and int/float compare as they do on disk."""
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


def _short(value, sub: str) -> str:
    """The differing value for the refusal message (the sub-field when nested), shortened."""
    v = value
    for part in sub.split(".")[1:]:
        v = v.get(part) if isinstance(v, dict) else v
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
