"""Scaling of `gauge sweep`: N small IMP runs on 1 and 2 Dask worker processes against calling
``run_imp`` in a loop in one process, and the scheduler's overhead per task.

* loop: ``run_imp`` for seeds 0..N-1 in this process (data loaded once, torch warmed up);
* sweep, W workers: the same runs as a sweep (one task per IMP level) on a LocalCluster of W
  single-threaded worker processes, warmed up first (torch imported, one tiny training), so
  the figure is the steady state a long sweep sees; the cold start (cluster + imports) is
  reported apart;
* overhead: wall time of M independent no-op tasks on the 2-worker cluster, divided by M.

The workers get the configuration ``gauge sweep`` gives its local workers
(``analyses.sweep.local_worker_config``); ``--dask-defaults`` measures Dask's own instead.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/sweep_scaling.py --runs 8 --iters 400
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from pathlib import Path

WIDTHS = [64]


def _sweep_doc(runs: int, iters: int, levels: int) -> dict:
    return {"runs": {"model": "mlp", "model_kwargs": {"widths": WIDTHS}, "data": "mnist1d",
                     "seeds": list(range(runs)), "levels": levels,
                     "train": {"optimizer": "adam", "lr": 3e-3, "batch_size": 100,
                               "iters": iters, "fraction": 0.5}}}


def loop(runs: int, iters: int, levels: int, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the runs in a loop."""
    import torch

    from tickets.data import load_dataset
    from tickets.imp import run_imp
    from tickets.train import default_config
    torch.set_num_threads(1)
    data = load_dataset("mnist1d")
    cfg = default_config("mlp", "mnist1d").replace(optimizer="adam", lr=3e-3, batch_size=100,
                                                    iters=iters, epochs=None)
    kw = dict(levels=levels, fraction=0.5, model_kwargs={"widths": WIDTHS})
    run_imp("mlp", data, cfg, seed=99, out_dir=out / "warmup", **kw)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for seed in range(runs):
        run_imp("mlp", data, cfg, seed=seed, out_dir=out / f"s{seed}", **kw)
    return time.perf_counter() - t0, time.process_time() - cpu0


def _warm_up(dask_worker=None) -> None:
    import torch

    from analyses import cli  # noqa: F401 - the import a first task pays
    from tickets.data import load_dataset
    from tickets.models import build_model
    from tickets.train import TrainConfig, train
    torch.set_num_threads(1)
    data = load_dataset("mnist1d")
    net = build_model("mlp", num_classes=10, input_shape=(40,), seed=0, widths=WIDTHS)
    train(net, data, TrainConfig(optimizer="adam", lr=3e-3, batch_size=100, iters=20), seed=0,
          data_seed=0)


def sweep(workers: int, runs: int, iters: int, levels: int, out: Path,
          noop: int = 0, tuned: bool = True) -> dict:
    from distributed import Client, LocalCluster

    from analyses.sweep import local_worker_config, run_sweep
    from analyses.sweep_plan import parse_sweep, plan
    p = plan(parse_sweep(_sweep_doc(runs, iters, levels)), out)
    t0 = time.perf_counter()
    config = local_worker_config() if tuned else contextlib.nullcontext()
    with config, LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        client.run(_warm_up)
        cold = time.perf_counter() - t0
        t1 = time.perf_counter()
        outcome = run_sweep(p, client)
        wall = time.perf_counter() - t1
        assert not outcome.failed, outcome.failed
        per_task = None
        if noop:
            client.gather(client.map(_identity, range(50), pure=False))  # warm the path
            t2 = time.perf_counter()
            client.gather(client.map(_identity, range(noop), pure=False))
            per_task = (time.perf_counter() - t2) / noop
    busiest = {}
    for t in outcome.tasks:
        busiest[t["worker"]] = busiest.get(t["worker"], 0.0) + t["cpu_time"]
    return {"wall": wall, "start": cold, "tasks": len(p.tasks), "noop_per_task": per_task,
            "cpu_busiest": max(busiest.values()), "cpu_total": sum(busiest.values())}


def _identity(x):
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=400, help="training iterations per level")
    ap.add_argument("--levels", type=int, default=1)
    ap.add_argument("--noop", type=int, default=500, help="no-op tasks for the overhead")
    ap.add_argument("--dask-defaults", action="store_true",
                    help="Dask's default worker configuration instead of gauge sweep's")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_loop, cpu_loop = loop(args.runs, args.iters, args.levels, tmp / "loop")
        print(f"loop of run_imp, {args.runs} runs x {args.levels + 1} levels: {t_loop:.2f} s "
              f"(CPU {cpu_loop:.2f} s)", flush=True)
        tuned = not args.dask_defaults
        one = sweep(1, args.runs, args.iters, args.levels, tmp / "w1", tuned=tuned)
        print(f"sweep, 1 worker:  {one['wall']:.2f} s ({one['tasks']} tasks; cluster start + "
              f"warm-up {one['start']:.1f} s)", flush=True)
        two = sweep(2, args.runs, args.iters, args.levels, tmp / "w2", noop=args.noop,
                    tuned=tuned)
        print(f"sweep, 2 workers: {two['wall']:.2f} s (cluster start + warm-up "
              f"{two['start']:.1f} s)", flush=True)
    print(f"speed-up 2 workers vs loop:     {t_loop / two['wall']:.2f}x")
    print(f"speed-up 2 workers vs 1 worker: {one['wall'] / two['wall']:.2f}x")
    print(f"1 worker vs loop (sweep cost):  {one['wall'] / t_loop:.2f}x")
    # CPU seconds barely depend on what else the machine runs: the loop's CPU time over the
    # busiest worker's is the speed-up the 2 workers reach on 2 otherwise idle cores.
    print(f"CPU: loop {cpu_loop:.2f} s; tasks on 1 worker {one['cpu_total']:.2f} s "
          f"({one['cpu_total'] / cpu_loop:.2f}x the loop); on 2 workers {two['cpu_total']:.2f} s, "
          f"busiest worker {two['cpu_busiest']:.2f} s")
    print(f"speed-up on 2 idle cores (loop CPU / busiest worker CPU): "
          f"{cpu_loop / two['cpu_busiest']:.2f}x")
    print(f"scheduler overhead per task ({args.noop} no-op tasks, 2 workers): "
          f"{1000 * two['noop_per_task']:.1f} ms")


if __name__ == "__main__":
    main()
