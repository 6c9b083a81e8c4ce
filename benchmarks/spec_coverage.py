"""Spec coverage: does ``infer_spec`` give a function-preserving spec on real architectures?

For every torchvision classification model up to ``--max-params`` (random init, eval mode) and
a Hugging Face set built from tiny configs (GPT-2, BERT, ViT, Llama with grouped-query
attention), one row:

* ``spec ok``: ``infer_spec`` ran and a random permutation from the spec leaves the output
  unchanged (relative error ``||f(P theta) - f(theta)|| / ||f(theta)||`` below 1e-5: the
  ``function error`` column);
* ``% permuted``: share of state_dict elements in tensors with a permuted axis;
* ``planted recovery``: weight matching of A (every tensor N(0, 1)) and B = P(A + 0.6 noise)
  recovers P (fraction of units);
* ``infer``/``match`` time (s);
* the peers on the same model and input: Torch-Pruning's ``DependencyGraph.build_dependency``
  time (or its error) and the PyPI ``rebasin`` package's ``PermutationCoordinateDescent`` on the
  same planted pair (time, or its error).

Each model runs in its own subprocess (a crash or a hang costs one row; ``--timeout``), and rows
are appended to ``--out`` (JSON lines) as they finish, so a long run leaves partial results.
Inputs are 2x3x64x64 (224x224 where a model needs it). Run from the repository root in the
benchmark venv (torchvision, torch_pruning, rebasin, transformers):

    PYTHONPATH=$PWD nice /work/tv-venv/bin/python benchmarks/spec_coverage.py --out cov.jsonl
    PYTHONPATH=$PWD /work/tv-venv/bin/python benchmarks/spec_coverage.py --models resnet18 gpt2
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

HF = ("gpt2", "bert", "hf_vit", "llama")


class _HF(nn.Module):
    """A Hugging Face model returning one tensor (logits or the last hidden state)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m(x)
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def hf_model(name):
    """``(model, example input)`` of a tiny Hugging Face model (no download)."""
    import transformers as tf
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 16))
    if name == "gpt2":
        m = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100,
                                             n_positions=32))
    elif name == "bert":
        m = tf.BertForSequenceClassification(tf.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=100, max_position_embeddings=32, num_labels=3))
    elif name == "hf_vit":
        m = tf.ViTForImageClassification(tf.ViTConfig(
            image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=128, num_labels=10))
        ids = torch.randn(2, 3, 32, 32)
    elif name == "llama":
        m = tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=100, max_position_embeddings=32))
    else:
        raise KeyError(name)
    return _HF(m).eval(), ids


def torchvision_names(max_params):
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    sized = []
    for n in names:
        try:  # the weights' metadata records the size; nothing is downloaded
            p = torchvision.models.get_model_weights(n).DEFAULT.meta["num_params"]
        except (ValueError, AttributeError, KeyError):
            with torch.device("meta"):
                p = sum(t.numel() for t in torchvision.models.get_model(n).parameters())
        if p <= max_params:
            sized.append((p, n))
    return [n for _, n in sorted(sized)]


def build(name):
    """``(model, example input)``: 64x64 unless the model needs its native 224."""
    if name in HF:
        return hf_model(name)
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.get_model(name).eval()
    for side in (64, 224):
        x = torch.randn(2, 3, side, side)
        try:
            with torch.no_grad():
                m(x)
            return m, x
        except Exception:  # too small for this architecture
            continue
    return m, torch.randn(2, 3, 224, 224)


def rel_error(model, params_a, params_b, x) -> float:
    with torch.no_grad():
        ya = torch.func.functional_call(model, params_a, (x,), tie_weights=False)
        yb = torch.func.functional_call(model, params_b, (x,), tie_weights=False)
    return float((ya - yb).norm() / ya.norm().clamp_min(1e-30))


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def one(name, peers=True, rebasin_max=25e6) -> dict:
    """Every measurement of one model (run in a subprocess by :func:`main`)."""
    from gauge import apply_permutation, infer_spec, invert, random_permutation, weight_matching
    from align_bench import planted_pair
    from gauge.spec import permuted_fraction
    row = {"model": name}
    model, x = build(name)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["input"] = "x".join(map(str, x.shape))
    t0 = time.perf_counter()
    try:
        spec = infer_spec(model, x)
        row["infer_s"] = time.perf_counter() - t0
        row["permuted"] = permuted_fraction(spec)
        sd = dict(model.state_dict())
        row["function_error"] = rel_error(model, sd, apply_permutation(
            spec, random_permutation(spec, 0), sd), x)
        row["spec_ok"] = row["function_error"] < 1e-5
        pa, pb, planted = planted_pair(model, spec, 0)
        t0 = time.perf_counter()
        res = weight_matching(spec, pa, pb)
        row["match_s"] = time.perf_counter() - t0
        inv = invert(planted)
        units = sum(spec.sizes.values())
        row["recovery"] = sum(int((res.perm[g] == inv[g]).sum()) for g in spec.groups) / \
            max(units, 1)
    except Exception as e:  # a row per model, whatever fails
        row["spec_ok"] = False
        row["error"] = _err(e)
        pa = pb = None
    if peers:
        row.update(_torch_pruning(model, x))
        if pa is not None and row["params"] <= rebasin_max:
            row.update(_rebasin(model, x, pa, pb))
        elif pa is not None:
            row["rebasin"] = "skipped (> --rebasin-max-params)"
    return row


def _torch_pruning(model, x) -> dict:
    try:
        import torch_pruning as tp
    except ImportError:
        return {"tp": "not installed"}
    try:
        t0 = time.perf_counter()
        tp.DependencyGraph().build_dependency(copy.deepcopy(model), example_inputs=x)
        return {"tp": "ok", "tp_s": time.perf_counter() - t0}
    except Exception as e:
        return {"tp": _err(e)}


def _rebasin(model, x, pa, pb) -> dict:
    try:
        import rebasin
    except ImportError:
        return {"rebasin": "not installed"}
    try:
        ma, mb = copy.deepcopy(model), copy.deepcopy(model)
        ma.load_state_dict(pa)
        mb.load_state_dict(pb)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        pcd = rebasin.PermutationCoordinateDescent(ma, mb, x)
        pcd.calculate_permutations(100)
        return {"rebasin": "ok", "rebasin_s": time.perf_counter() - t0}
    except Exception as e:
        return {"rebasin": _err(e)}


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def table(rows) -> str:
    head = ("model", "params (M)", "spec ok", "% permuted", "function error", "planted recovery",
            "infer (s)", "match (s)", "Torch-Pruning DG (s)", "rebasin (s)")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tp = _fmt(r.get("tp_s"), ".2f") if r.get("tp") == "ok" else r.get("tp", "")[:40]
        rb = _fmt(r.get("rebasin_s"), ".2f") if r.get("rebasin") == "ok" else \
            r.get("rebasin", "")[:40].replace(" (> --rebasin-max-params)", "")
        ok = "yes" if r.get("spec_ok") else ("no: " + r.get("error", "output changed"))[:70]
        out.append("| " + " | ".join([
            r["model"], _fmt(r.get("params", 0) / 1e6, ".1f"), ok,
            _fmt(100 * r["permuted"], ".1f") if "permuted" in r else "",
            _fmt(r.get("function_error"), ".1e"),
            _fmt(100 * r["recovery"], ".1f") + "%" if "recovery" in r else "",
            _fmt(r.get("infer_s"), ".2f"), _fmt(r.get("match_s"), ".2f"), tp, rb]) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="only these (torchvision names or gpt2, bert, hf_vit, llama)")
    parser.add_argument("--max-params", type=float, default=150e6)
    parser.add_argument("--out", default="spec_coverage.jsonl", help="rows as JSON lines")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true", help="skip Torch-Pruning, rebasin")
    parser.add_argument("--rebasin-max-params", type=float, default=25e6,
                        help="run rebasin only up to this size (it takes minutes on ResNet-18)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(args.one, peers=not args.no_peers,
                             rebasin_max=args.rebasin_max_params)), flush=True)
        return 0
    names = args.models or [*torchvision_names(args.max_params), *HF]
    out = Path(args.out)
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(args.threads),
               "--rebasin-max-params", str(args.rebasin_max_params)]
        if args.no_peers:
            cmd.append("--no-peers")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
            row = json.loads(lines[-1]) if lines else {
                "model": name, "spec_ok": False,
                "error": (proc.stderr.strip().splitlines() or ["crashed"])[-1][:160]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "spec_ok": False, "error": f"timeout after {args.timeout} s"}
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))
    ok = [r for r in rows if r.get("spec_ok")]
    print(f"\n{len(ok)} of {len(rows)} models with a function-preserving spec; "
          f"{sum(1 for r in rows if r.get('tp') == 'ok')} with a Torch-Pruning graph; "
          f"{sum(1 for r in rows if r.get('rebasin') == 'ok')} with rebasin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
