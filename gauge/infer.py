"""Spec inference: the :class:`~gauge.spec.PermutationSpec` of a model, found by tracing it.

:func:`infer_spec` finds the groups by running the model once on an example input under a
``torch.overrides.TorchFunctionMode`` that sees every torch function call with concrete shapes
(so shape-dependent Python branches such as ``if x.dim() == 2`` are no obstacle, which they are
for ``torch.fx.symbolic_trace``). Each tensor axis gets a label; ops tie labels together in a
union-find (linear/conv in-out, norms, elementwise ops, residual adds) and reshapes split or
merge labels into ordered factors. The groups are the connected components that never touch an
axis of the network input or output. Ops it does not understand raise :class:`TraceError`
naming the op and the module it ran in; pass a spec by hand with :meth:`PermutationSpec.from_axes`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gauge.errors import TraceError
from gauge.spec import Axis, PermutationSpec
from gauge.symmetry import apply_permutation, apply_rescaling, random_permutation, random_scales

__all__ = ["infer_spec"]


class _Unsupported(Exception):
    pass


def _cannot_infer(why: str) -> TraceError:
    return TraceError(f"cannot infer a permutation spec: {why}; pass a spec by hand with "
                      f"PermutationSpec.from_axes")


class _Labels:
    """Union-find over axis labels; a label may be factored into an ordered list of labels
    (a reshape's view of one axis as several); ``fixed`` labels are never permuted and ``bad``
    labels are not rescalable."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.bad: list[bool] = []
        self.factors: dict[int, list[int]] = {}

    def new(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(bool(fixed) or int(size) == 1)
        self.bad.append(False)
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def _spread(self, flags: list[bool], x: int) -> None:
        """Set ``flags`` on ``x``'s class and, recursively, on its factors."""
        r = self.find(x)
        flags[r] = True
        for f in self.factors.get(r, ()):
            if not flags[self.find(f)]:
                self._spread(flags, f)

    def fix(self, x: int) -> None:
        self._spread(self.fixed, x)

    def mark_bad(self, x: int) -> None:
        self._spread(self.bad, x)

    def set_factors(self, x: int, parts: list[int]) -> None:
        r = self.find(x)
        self.factors[r] = list(parts)
        if self.fixed[r]:
            self.fix(r)
        if self.bad[r]:
            self.mark_bad(r)

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if self.size[rx] != self.size[ry]:
            raise _Unsupported(f"axes of sizes {self.size[rx]} and {self.size[ry]} are tied")
        self.parent[ry] = rx
        fx, fy = self.factors.pop(rx, None), self.factors.pop(ry, None)
        self.fixed[rx] = self.fixed[rx] or self.fixed[ry]
        self.bad[rx] = self.bad[rx] or self.bad[ry]
        if fx is not None and fy is not None:
            self.factors[rx] = fx
            if [self.size[self.find(a)] for a in fx] == [self.size[self.find(b)] for b in fy]:
                for a, b in zip(fx, fy):
                    self.union(a, b)
            else:  # two incompatible factorings of one axis: keep it whole and unpermuted
                for a in fx + fy:
                    self.fix(a)
                self.fixed[rx] = True
        elif fx is not None or fy is not None:
            self.factors[rx] = fx if fx is not None else fy
        if self.fixed[rx]:
            self.fix(rx)
        if self.bad[rx]:
            self.mark_bad(rx)

    def atoms(self, x: int, depth: int = 0) -> list[int]:
        r = self.find(x)
        if self.size[r] == 1:
            return []
        if r in self.factors and depth < 64:
            return [a for f in self.factors[r] for a in self.atoms(f, depth + 1)]
        return [r]

    def is_free(self, x: int) -> bool:
        r = self.find(x)
        return not self.fixed[r] and self.size[r] > 1


_ELEMENTWISE_HOMOGENEOUS = {
    "relu", "leaky_relu", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "clone", "contiguous", "detach", "float", "double", "half",
    "bfloat16", "to", "type_as", "abs", "neg", "identity", "cpu", "cuda", "requires_grad",
    "pos"}
_ELEMENTWISE_OTHER = {
    "gelu", "silu", "tanh", "sigmoid", "elu", "selu", "celu", "softplus", "mish", "hardswish",
    "hardtanh", "relu6", "hardsigmoid", "exp", "log", "sqrt", "rsqrt", "square", "pow", "sin",
    "cos", "erf", "softmax", "log_softmax", "clamp", "clip", "logsigmoid", "softsign",
    "tanhshrink", "reciprocal", "sign", "glu_"}
_BINARY = {"add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul", "div", "truediv",
           "rtruediv", "itruediv", "true_divide", "maximum", "minimum"}
_RESHAPES = {"flatten", "view", "reshape", "unflatten", "view_as", "reshape_as", "squeeze",
             "unsqueeze"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp",
               "prod"}
_QUERIES = {"dim", "size", "numel", "ndimension", "nelement", "is_contiguous", "get_device",
            "is_floating_point", "is_complex", "__get__", "__len__", "__format__", "__repr__",
            "__bool__", "__index__", "__int__", "__float__", "data_ptr", "element_size",
            "stride", "storage_offset", "has_names", "_is_view", "is_nonzero", "item",
            "tolist", "equal", "allclose"}


def _norm_name(func) -> str:
    name = getattr(func, "__name__", repr(func))
    if name.startswith("__") and name.endswith("__") and name not in _QUERIES:
        name = name[2:-2]
    name = name.lstrip("_")
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _dims(d, ndim) -> list[int]:
    if d is None:
        return list(range(ndim))
    if isinstance(d, (list, tuple, torch.Size)):
        return sorted(int(x) % ndim for x in d)
    return [int(d) % ndim]


class _Tracer(TorchFunctionMode):
    """Runs the model once and labels every tensor axis it sees (see module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.L = _Labels()
        self.labels: dict[int, list[int]] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.param_names: dict[int, list[str]] = {}
        self.param_labels: dict[str, list[int]] = {}
        self.param_ok: dict[str, bool] = {}
        self.module_stack: list[str] = []
        self.reduced: list[int] = []  # labels summed over by a permutation-invariant reduction
        self.suppress = 0
        self.hooks = []
        sd = model.state_dict(keep_vars=True)
        for name, t in sd.items():
            if id(t) in self.param_names:
                self.param_names[id(t)].append(name)
                self.param_labels[name] = self.labels[id(t)]
            else:
                self.param_names[id(t)] = [name]
                self.set(t, [self.L.new(s) for s in t.shape])
                self.param_labels[name] = self.labels[id(t)]
            self.param_ok[name] = True
        for mname, mod in model.named_modules():
            self.hooks.append(mod.register_forward_pre_hook(self._pre_hook(mname, mod),
                                                            with_kwargs=True))
            self.hooks.append(mod.register_forward_hook(self._post_hook(mname, mod),
                                                        with_kwargs=True))

    # ---- bookkeeping
    def set(self, t: torch.Tensor, labels: list[int]) -> None:
        self.labels[id(t)] = list(labels)
        self.keep.append(t)

    def get(self, t: torch.Tensor) -> list[int]:
        if id(t) not in self.labels:  # a constant or an input: never permuted
            self.set(t, [self.L.new(s, fixed=True) for s in t.shape])
        return self.labels[id(t)]

    def where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "<top level>"

    def not_ok(self, t) -> None:
        for n in self.param_names.get(id(t), ()):
            self.param_ok[n] = False

    def bad_all(self, *ts) -> None:
        for t in ts:
            if isinstance(t, torch.Tensor):
                for lab in self.get(t):
                    self.L.mark_bad(lab)
                self.not_ok(t)

    def fixed_like(self, out) -> None:
        for t in _tensors(out):
            self.set(t, [self.L.new(s, fixed=True) for s in t.shape])

    # ---- module hooks (MultiheadAttention is handled as one op)
    def _pre_hook(self, mname, mod):
        def hook(module, args, kwargs):
            self.module_stack.append(f"{mname or '<root>'} ({type(mod).__name__})")
            if isinstance(mod, nn.MultiheadAttention):
                self.suppress += 1
        return hook

    def _post_hook(self, mname, mod):
        def hook(module, args, kwargs, output):
            if isinstance(mod, nn.MultiheadAttention):
                self.suppress -= 1
                if self.suppress == 0:
                    try:
                        self._mha(mname, mod, args, kwargs, output)
                    except _Unsupported as e:
                        raise _cannot_infer(f"{e} in module {self.where()}") from None
            if self.module_stack:
                self.module_stack.pop()
        return hook

    def _mha(self, mname, mod: nn.MultiheadAttention, args, kwargs, output):
        if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
            raise _Unsupported("nn.MultiheadAttention with kdim/vdim != embed_dim, add_bias_kv "
                               "or add_zero_attn is not supported")
        q = _arg(args, kwargs, 0, "query")
        k = _arg(args, kwargs, 1, "key")
        v = _arg(args, kwargs, 2, "value")
        W = mod.in_proj_weight
        lw = self.get(W)
        for t in (q, k, v):
            self.L.union(self.get(t)[-1], lw[1])
            self.bad_all(t)
        heads = self.L.new(mod.num_heads)
        d = mod.head_dim
        # Heads move as blocks in q, k and v alike; dims inside a head stay fixed (a subgroup of
        # the full symmetry, so the spec is correct though not maximal).
        self.L.set_factors(lw[0], [self.L.new(3, fixed=True), heads, self.L.new(d, fixed=True)])
        if mod.in_proj_bias is not None:
            self.L.union(self.get(mod.in_proj_bias)[0], lw[0])
        lo = self.get(mod.out_proj.weight)
        self.L.set_factors(lo[1], [heads, self.L.new(d, fixed=True)])
        if mod.out_proj.bias is not None:
            self.L.union(self.get(mod.out_proj.bias)[0], lo[0])
        for t in (W, mod.in_proj_bias, mod.out_proj.weight, mod.out_proj.bias):
            if t is not None:
                self.bad_all(t)
        out, weights = output if isinstance(output, tuple) else (output, None)
        self.set(out, self.get(q)[:-1] + [lo[0]])
        if isinstance(weights, torch.Tensor):
            labs = [self.L.new(s, fixed=True) for s in weights.shape]
            if weights.dim() == 4:  # per-head weights (average_attn_weights=False)
                labs[1] = heads
            self.set(weights, labs)

    # ---- the op handlers
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.suppress:
            return out
        name = _norm_name(func)
        outs = _tensors(out)
        if not outs or name in _QUERIES:
            return out
        inputs = _tensors((args, kwargs))
        try:
            self._handle(name, args, kwargs, out, inputs)
        except _Unsupported as e:
            raise _cannot_infer(f"{e} (op {name!r} in module {self.where()})") from None
        return out

    def _unknown(self, name, inputs, out):
        if all(not self.L.is_free(a) for t in inputs for lab in self.get(t)
               for a in self.L.atoms(lab)):
            self.fixed_like(out)  # an op on unpermuted values yields unpermuted values
            return
        raise _Unsupported(f"op {name!r} is not supported on permutable axes")

    def _handle(self, name, args, kwargs, out, inputs):
        L = self.L
        if name in _ELEMENTWISE_HOMOGENEOUS or name in _ELEMENTWISE_OTHER:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else inputs[0]
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                return self._unknown(name, inputs, out)
            if name in _ELEMENTWISE_OTHER:
                self.bad_all(x)
            self.not_ok(x)
            self.set(out, self.get(x))
            return
        if name in _BINARY:
            return self._binary(name, args, out)
        if name in _RESHAPES:
            x = args[0]
            self.not_ok(x)
            self.set(out, self._reshape(self.get(x), tuple(x.shape), tuple(out.shape)))
            return
        if name in ("transpose", "swapaxes", "swapdims", "t", "permute", "movedim"):
            return self._transpose(name, args, kwargs, out)
        if name == "linear":
            return self._linear(args, kwargs, out)
        if name in ("conv1d", "conv2d", "conv3d"):
            return self._conv(args, kwargs, out)
        if name in ("batch_norm", "instance_norm", "layer_norm", "group_norm"):
            return self._norm(name, args, kwargs, inputs, out)
        if any(name.startswith(p) for p in ("max_pool", "avg_pool", "adaptive_avg_pool",
                                             "adaptive_max_pool", "lp_pool")):
            return self._pool(name, args, kwargs, out)
        if name in _REDUCTIONS:
            return self._reduce(name, args, kwargs, out)
        if name in ("cat", "concat", "concatenate", "stack"):
            return self._cat(name, args, kwargs, out)
        if name in ("chunk", "split", "unbind", "tensor_split"):
            return self._split(args, kwargs, out)
        if name == "getitem":
            return self._getitem(args, out)
        if name in ("matmul", "bmm", "mm"):
            return self._matmul(args, out)
        if name == "scaled_dot_product_attention":
            return self._sdpa(args, kwargs, out)
        if name == "embedding":
            idx, w = args[0], args[1]
            lw = self.get(w)
            L.fix(lw[0])
            self.bad_all(w)
            self.set(out, self.get(idx) + [lw[1]])
            return
        return self._unknown(name, inputs, out)

    def _norm(self, name, args, kwargs, inputs, out):
        """Affine params tie to the normalised channels; normalisation is not homogeneous."""
        L, x = self.L, args[0]
        if name in ("batch_norm", "instance_norm"):
            ch = self.get(x)[1 if x.dim() > 1 else 0]
            for t in inputs[1:]:
                if t.dim() == 1:
                    L.union(self.get(t)[0], ch)
        elif name == "layer_norm":
            k = len(_arg(args, kwargs, 1, "normalized_shape"))
            for t in inputs[1:]:
                for i, lab in enumerate(self.get(t)):
                    L.union(lab, self.get(x)[x.dim() - k + i])
        else:
            groups, ch = int(_arg(args, kwargs, 1, "num_groups")), self.get(x)[1]
            if groups not in (1, x.shape[1]):  # units may move only within their group
                L.fix(ch)
            for t in inputs[1:]:
                L.union(self.get(t)[0], ch)
        self.bad_all(*inputs)
        self.set(out, self.get(x))

    def _pool(self, name, args, kwargs, out):
        x = args[0] if args else kwargs["input"]
        k = int(next(c for c in name if c.isdigit()))
        lead = self.get(x)[: x.dim() - k]
        for t in outs_of(out):
            self.set(t, lead + [self.L.new(s, fixed=True) for s in t.shape[len(lead):]])

    def _split(self, args, kwargs, out):
        x = args[0]
        dim = int(_arg(args, kwargs, 2, "dim", 0)) % x.dim()
        labs = list(self.get(x))
        self.L.fix(labs[dim])
        for t in outs_of(out):
            if t.dim() == x.dim():
                self.set(t, labs[:dim] + [self.L.new(t.shape[dim], True)] + labs[dim + 1:])
            else:
                self.set(t, labs[:dim] + labs[dim + 1:])

    def _binary(self, name, args, out):
        L = self.L
        ops = [a for a in args[:2] if isinstance(a, torch.Tensor)]
        scalar = any(not isinstance(a, torch.Tensor) for a in args[:2])
        if not isinstance(out, torch.Tensor):
            return self._unknown(name, ops, out)
        nd = out.dim()
        out_labs: list[int | None] = [None] * nd
        homog = name in ("add", "radd", "iadd", "sub", "rsub", "isub") and not scalar
        homog_scalar = scalar and name in ("mul", "rmul", "imul", "div", "truediv", "itruediv")
        for t in ops:
            labs = self.get(t)
            for j in range(1, t.dim() + 1):
                o = nd - j
                lab = labs[t.dim() - j]
                if t.shape[t.dim() - j] == out.shape[o]:
                    if out_labs[o] is None:
                        out_labs[o] = lab
                    else:
                        L.union(out_labs[o], lab)
                elif out.shape[o] > 1:
                    homog = False  # a broadcast operand: not a sum of two scaled streams
            if t.dim() < nd:
                homog = False
            if id(t) in self.param_names:
                homog = False
                self.not_ok(t)
        for o in range(nd):
            if out_labs[o] is None:
                out_labs[o] = L.new(out.shape[o], fixed=True)
        if not (homog or homog_scalar):
            for lab in out_labs:
                L.mark_bad(lab)
        self.set(out, out_labs)

    def _reshape(self, labs, in_shape, out_shape) -> list[int]:
        """Labels of a reshape's output. The shapes are cut into the shortest segments of
        equal numel (dims of size 1 aside); within a segment each output dim is the product of
        consecutive input atoms, splitting an atom into factors where needed. A segment that
        cuts across units (e.g. 8x7 read as 7x8) holds only its own axes fixed."""
        L = self.L
        out: list[int | None] = [None] * len(out_shape)
        ins = [d for d, s in enumerate(in_shape) if s != 1]
        outs = [d for d, s in enumerate(out_shape) if s != 1]
        for d, s in enumerate(out_shape):
            if s == 1:
                out[d] = L.new(1, fixed=True)
        p = q = 0
        try:
            while p < len(ins) or q < len(outs):
                seg_in, seg_out = [ins[p]], [outs[q]]
                n_in, n_out = in_shape[ins[p]], out_shape[outs[q]]
                p, q = p + 1, q + 1
                while n_in != n_out:
                    if n_in < n_out:
                        seg_in.append(ins[p])
                        n_in *= in_shape[ins[p]]
                        p += 1
                    else:
                        seg_out.append(outs[q])
                        n_out *= out_shape[outs[q]]
                        q += 1
                res = self._reshape_segment([labs[d] for d in seg_in],
                                            [out_shape[d] for d in seg_out])
                for d, lab in zip(seg_out, res):
                    out[d] = lab
        except IndexError:  # numel 0: nothing to keep track of
            for lab in labs:
                L.fix(lab)
            return [L.new(t, fixed=True) for t in out_shape]
        return out

    def _reshape_segment(self, labs, sizes) -> list[int]:
        L = self.L
        atoms = [a for lab in labs for a in L.atoms(lab)]
        seq = [(a, L.size[L.find(a)]) for a in atoms]
        out: list[int] = []
        pos = 0
        try:
            for t in sizes:
                taken, prod = [], 1
                while prod < t:
                    if pos >= len(seq):
                        raise _Unsupported("reshape")
                    a, s = seq[pos]
                    if t % (prod * s) == 0:
                        taken.append(a)
                        prod *= s
                        pos += 1
                        continue
                    need = t // prod
                    if t % prod or s % need:
                        raise _Unsupported("reshape")
                    a1, a2 = L.new(need), L.new(s // need)
                    L.set_factors(a, [a1, a2])
                    seq[pos:pos + 1] = [(a1, need), (a2, s // need)]
                if len(taken) == 1:
                    out.append(taken[0])
                else:
                    new = L.new(t)
                    L.set_factors(new, taken)
                    out.append(new)
            if pos != len(seq):
                raise _Unsupported("reshape")
        except _Unsupported:
            for a in atoms:  # a reshape that cuts across units: keep those axes unpermuted
                L.fix(a)
            return [L.new(t, fixed=True) for t in sizes]
        return out

    def _transpose(self, name, args, kwargs, out):
        x = args[0]
        labs = list(self.get(x))
        nd = x.dim()
        if name == "t":
            perm = list(range(nd))[::-1]
        elif name == "permute":
            dims = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) \
                else args[1]
            perm = [int(d) % nd for d in dims]
        elif name == "movedim":
            src, dst = _dims(args[1], nd), _dims(args[2], nd)
            rest = [d for d in range(nd) if d not in src]
            perm = [None] * nd
            for s_, d_ in zip(src, dst):
                perm[d_] = s_
            it = iter(rest)
            perm = [p if p is not None else next(it) for p in perm]
        else:
            d0 = int(_arg(args, kwargs, 1, "dim0")) % nd
            d1 = int(_arg(args, kwargs, 2, "dim1")) % nd
            perm = list(range(nd))
            perm[d0], perm[d1] = d1, d0
        self.not_ok(x)
        self.set(out, [labs[p] for p in perm])

    def _linear(self, args, kwargs, out):
        L = self.L
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        lw = self.get(w)
        L.union(self.get(x)[-1], lw[1])
        if b is not None:
            L.union(self.get(b)[0], lw[0])
        self.set(out, self.get(x)[:-1] + [lw[0]])

    def _conv(self, args, kwargs, out):
        L = self.L
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        groups = int(_arg(args, kwargs, 6, "groups", 1))
        batched = x.dim() == w.dim()
        c = 1 if batched else 0
        lx, lw = self.get(x), self.get(w)
        for lab in lw[2:]:  # kernel taps have an order
            L.fix(lab)
        if groups == 1:
            L.union(lx[c], lw[1])
        elif groups == x.shape[c] == w.shape[0]:  # depthwise: channel c maps to channel c
            L.union(lx[c], lw[0])
            self.bad_all(x, w)
        else:
            L.fix(lx[c])
            L.fix(lw[0])
        if b is not None:
            L.union(self.get(b)[0], lw[0])
        lead = lx[:c]
        self.set(out, lead + [lw[0]] + [L.new(s, fixed=True) for s in out.shape[c + 1:]])

    def _reduce(self, name, args, kwargs, out):
        L = self.L
        x = args[0]
        dim = _arg(args, kwargs, 1, "dim")
        if name == "norm":
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
        keep = bool(_arg(args, kwargs, 2, "keepdim", False)) if name != "norm" else \
            bool(kwargs.get("keepdim", False))
        if not isinstance(dim, (int, list, tuple, type(None))):
            dim = None
        labs = self.get(x)
        dims = _dims(dim, x.dim())
        for d in dims:
            L.mark_bad(labs[d])
            self.reduced.append(labs[d])
        self.not_ok(x)
        res = []
        for d in range(x.dim()):
            if d in dims:
                if keep:
                    res.append(L.new(1, fixed=True))
            else:
                res.append(labs[d])
        for t in outs_of(out):
            self.set(t, res if t.dim() == len(res) else [L.new(s, True) for s in t.shape])

    def _cat(self, name, args, kwargs, out):
        L = self.L
        ts = list(args[0])
        if name != "stack" and out.dim() != 1:
            # torch.cat accepts the legacy empty tensor of shape (0,) beside tensors of any
            # rank (transformers' caches start from one); it contributes nothing
            ts = [t for t in ts if not (t.dim() == 1 and t.shape[0] == 0)]
        if len(ts) == 1:
            self.not_ok(ts[0])
            self.set(out, self.get(ts[0]))
            return
        nd = ts[0].dim()
        dim = int(_arg(args, kwargs, 1, "dim", 0))
        if name == "stack":
            dim %= nd + 1
            base = list(self.get(ts[0]))
            for t in ts[1:]:
                for a, b in zip(base, self.get(t)):
                    L.union(a, b)
            self.set(out, base[:dim] + [L.new(len(ts), True)] + base[dim:])
            return
        dim %= nd
        base = list(self.get(ts[0]))
        for t in ts:
            labs = self.get(t)
            L.fix(labs[dim])  # units from different pieces must not mix
            for d in range(nd):
                if d != dim:
                    L.union(base[d], labs[d])
        base[dim] = L.new(out.shape[dim], fixed=True)
        self.set(out, base)

    def _getitem(self, args, out):
        L = self.L
        x, idx = args[0], args[1]
        if not isinstance(idx, tuple):
            idx = (idx,)
        labs = self.get(x)
        if any(isinstance(i, torch.Tensor) or isinstance(i, (list,)) for i in idx):
            for lab in labs:
                L.fix(lab)
            self.fixed_like(out)
            return
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded = []
        for i in idx:
            if i is Ellipsis:
                expanded += [slice(None)] * (x.dim() - n_real)
            else:
                expanded.append(i)
        expanded += [slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None))
        res, d = [], 0
        for i in expanded:
            if i is None:
                res.append(L.new(1, fixed=True))
                continue
            if isinstance(i, slice) and i == slice(None):
                res.append(labs[d])
            else:
                L.fix(labs[d])
                if isinstance(i, slice):
                    res.append(None)
            d += 1
        if not isinstance(out, torch.Tensor) or len(res) != out.dim():
            for lab in labs:
                L.fix(lab)
            self.fixed_like(out)
            return
        self.set(out, [r if r is not None else L.new(out.shape[j], True)
                       for j, r in enumerate(res)])

    def _matmul(self, args, out):
        L = self.L
        a, b = args[0], args[1]
        if a.dim() < 2 or b.dim() < 2:
            return self._unknown("matmul", [a, b], out)
        la, lb = self.get(a), self.get(b)
        L.union(la[-1], lb[-2])
        self.bad_all(a, b)
        batch = []
        nd = out.dim()
        for o in range(nd - 2):
            j = nd - 2 - o  # distance from the matrix dims
            cand = []
            for t, lt in ((a, la), (b, lb)):
                k = t.dim() - 2 - j
                if k >= 0 and t.shape[k] == out.shape[o]:
                    cand.append(lt[k])
            lab = cand[0] if cand else L.new(out.shape[o], True)
            for c in cand[1:]:
                L.union(lab, c)
            batch.append(lab)
        self.set(out, batch + [la[-2], lb[-1]])

    def _sdpa(self, args, kwargs, out):
        L = self.L
        q, k, v = args[0], args[1], args[2]
        lq, lk, lv = self.get(q), self.get(k), self.get(v)
        L.union(lq[-1], lk[-1])
        L.union(lk[-2], lv[-2])
        for i in range(q.dim() - 2):
            L.union(lq[i], lk[i])
            L.union(lq[i], lv[i])
        mask = _arg(args, kwargs, 3, "attn_mask")
        if isinstance(mask, torch.Tensor):
            for lab in self.get(mask):
                L.fix(lab)
        self.bad_all(q, k, v)
        self.set(out, lq[:-1] + [lv[-1]])


def outs_of(out) -> list[torch.Tensor]:
    return _tensors(out)


def _as_tuple(example_input) -> tuple:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _shapes(inputs: tuple) -> str:
    return ", ".join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                     for t in inputs)


def _trace(model: nn.Module, example_input) -> tuple["_Tracer", list[torch.Tensor], nn.Module]:
    """Run a deep copy of ``model`` once under the tracer: ``(tracer, outputs, copy)``."""
    try:
        work = copy.deepcopy(model).eval()
    except Exception as e:
        raise TraceError(f"cannot infer a permutation spec: {type(model).__name__} cannot be "
                         f"deep-copied ({type(e).__name__}: {e}); if it carries pruning "
                         f"reparametrizations (weight_orig/weight_mask), make them permanent with "
                         f"torch.nn.utils.prune.remove(module, 'weight') first (likewise "
                         f"torch.nn.utils.parametrize.remove_parametrizations for weight_norm)"
                         ) from None
    inputs = _as_tuple(example_input)
    tracer = _Tracer(work)
    try:
        with torch.no_grad(), tracer:
            for t in _tensors(inputs):
                tracer.get(t)
            out = work(*inputs)
    except TraceError:
        raise
    except _Unsupported as e:
        raise _cannot_infer(str(e)) from None
    except Exception as e:  # the model itself failed on the example input
        raise TraceError(f"running {type(model).__name__} on the example input "
                         f"(shape {_shapes(inputs)}) failed in module {tracer.where()}: "
                         f"{type(e).__name__}: {e}; check the input shape or "
                         f"pass a spec by hand with PermutationSpec.from_axes") from None
    finally:
        for h in tracer.hooks:
            h.remove()
    return tracer, _tensors(out), work


def _fix_unpermutable(tracer: "_Tracer", outputs: list[torch.Tensor]) -> None:
    """Hold fixed the output axes, all but the first free factor of each param axis, and every
    axis tied to no other axis."""
    L = tracer.L
    for t in outputs:
        for lab in tracer.get(t):
            L.fix(lab)
    # Resolve each param axis to at most one free factor; extra free factors are held fixed.
    while True:
        changed = False
        for name, labs in tracer.param_labels.items():
            for lab in labs:
                free = [a for a in L.atoms(lab) if L.is_free(a)]
                for a in free[1:]:
                    L.fix(a)
                    changed = True
        if not changed:
            break
    # A group is permuted only if it is provably free: used by a layer other than the one
    # producing it (weight and bias of one module count once), or summed over by a
    # permutation-invariant reduction. An axis used by no op the tracer saw tie it (an unused
    # layer, a consumer lost to an unknown op) is never permuted alone.
    modules: dict[int, set[str]] = {}
    for name, labs in tracer.param_labels.items():
        for lab in labs:
            for a in L.atoms(lab):
                if L.is_free(a):
                    modules.setdefault(L.find(a), set()).add(name.rpartition(".")[0])
    reduced = {L.find(a) for lab in tracer.reduced for a in L.atoms(lab)}
    for root, mods in modules.items():
        if len(mods) < 2 and root not in reduced:
            L.fix(root)


def _group_axes(tracer: "_Tracer"):
    """Name each free root after the first param on it: ``(axes, layouts, names,
    root_members)`` for :meth:`PermutationSpec.from_axes`."""
    L = tracer.L
    names: dict[int, str] = {}
    axes: dict[str, tuple] = {}
    layouts: dict[Axis, tuple[int, int]] = {}
    root_members: dict[int, list[Axis]] = {}
    for name, labs in tracer.param_labels.items():
        groups = []
        for ax, lab in enumerate(labs):
            atoms = L.atoms(lab)
            free = [i for i, a in enumerate(atoms) if L.is_free(a)]
            if not free:
                groups.append(None)
                continue
            i = free[0]
            root = L.find(atoms[i])
            if root not in names:
                base = name.rsplit(".", 1)[0] if "." in name else name
                cand, n = base, 2
                while cand in names.values():
                    cand, n = f"{base}#{n}", n + 1
                names[root] = cand
            r = math.prod(L.size[L.find(a)] for a in atoms[:i])
            b = math.prod(L.size[L.find(a)] for a in atoms[i + 1:])
            if (r, b) != (1, 1):
                layouts[(name, ax)] = (r, b)
            root_members.setdefault(root, []).append((name, ax))
            groups.append(names[root])
        axes[name] = tuple(groups)
    return axes, layouts, names, root_members


def _relative_change(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    """Largest ``||out - ref|| / ||ref||`` over the floating output tensors."""
    worst = 0.0
    for a, b in zip(ref, out):
        if a.dtype.is_floating_point and a.shape == b.shape and a.numel():
            a64, b64 = a.double(), b.double()
            worst = max(worst, float((b64 - a64).norm() / a64.norm().clamp_min(1e-30)))
    return worst


def _verify(spec: PermutationSpec, work: nn.Module, inputs: tuple, seed: int,
            tol: float) -> None:
    """Raise :class:`TraceError` unless one random permutation (and one random rescaling of the
    rescalable groups) of ``spec`` leaves ``work``'s outputs on ``inputs`` unchanged, naming the
    first group that changes them on its own."""
    params = work.state_dict()
    perm = random_permutation(spec, seed)
    scales = random_scales(spec, seed + 1)

    def change(groups) -> float:
        groups = set(groups)
        for g in list(groups):  # a nested group moves with its outer groups
            while g in spec.blocks and spec.blocks[g][0] is not None:
                g = spec.blocks[g][0]
                groups.add(g)
        groups |= {h for h, (o, _) in spec.blocks.items() if o in groups}
        p = apply_permutation(spec, {g: perm[g] for g in groups}, params)
        p = apply_rescaling(spec, {g: scales[g] for g in groups if g in scales}, p)
        with torch.no_grad():
            out = _tensors(torch.func.functional_call(work, p, inputs))
        return _relative_change(ref, out)

    with torch.no_grad():
        ref = _tensors(torch.func.functional_call(work, dict(params), inputs))
    err = change(spec.groups)
    if err <= tol:
        return
    culprit = next(((g, e) for g in spec.groups if (e := change([g])) > tol), None)
    what = (f"group {culprit[0]!r} ({', '.join(f'{k}[{ax}]' for k, ax in spec.perm_to_axes[culprit[0]][:6])}"
            f"{', ...' if len(spec.perm_to_axes[culprit[0]]) > 6 else ''}) changes them by "
            f"{culprit[1]:.3g}" if culprit else "no single group does; their combination does")
    raise TraceError(f"the inferred permutation spec of {type(work).__name__} changes its "
                     f"function (relative output change {err:.3g} > {tol:g}): {what}; some op is "
                     f"traced wrongly: pass a spec by hand with PermutationSpec.from_axes")


def infer_spec(model: nn.Module, example_input, *, check: bool = True, seed: int = 0,
               tol: float = 1e-4) -> PermutationSpec:
    """Infer the permutation spec of ``model`` by running it once on ``example_input``.

    ``example_input`` is a batch (a tensor, or a tuple of tensors passed positionally). The
    model is deep-copied and run in eval mode without gradients, so it is not changed.
    Supported ops: linear, conv1d/2d/3d (groups 1 or depthwise), batch/instance/layer/group norm,
    elementwise activations, dropout, pooling, reshapes/flatten/transpose, residual adds and
    products, reductions, concat (pieces stay unpermuted), matmul, scaled dot-product attention,
    embedding and :class:`torch.nn.MultiheadAttention` (heads permuted as blocks, dims within a
    head held fixed). The network's input and output axes are never permuted.

    With ``check`` (the default) the spec verifies itself before it is returned: one random
    permutation (drawn from ``seed``) and one random rescaling of the rescalable groups must
    leave the outputs on ``example_input`` unchanged up to ``tol`` (relative L2 change per output
    tensor). Turn it off only for models too large to run three times.

    Raises :class:`TraceError` for an op it cannot explain (naming op and module), for a model
    that cannot be deep-copied or run on ``example_input``, and for a spec that fails the check
    (naming the group).
    """
    tracer, outputs, work = _trace(model, example_input)
    _fix_unpermutable(tracer, outputs)
    axes, layouts, names, root_members = _group_axes(tracer)
    L = tracer.L
    rescalable = []
    for root, members in root_members.items():
        if L.bad[root]:
            continue
        if all(tracer.param_ok[k] for k, _ in members) and \
                any(ax == 0 for _, ax in members) and any(ax > 0 for _, ax in members):
            rescalable.append(names[root])
    sizes = {names[r]: L.size[r] for r in root_members}
    sd_shapes = {k: tuple(v.shape) for k, v in work.state_dict().items()}
    spec = PermutationSpec.from_axes(axes, sd_shapes, sizes=sizes, layouts=layouts,
                                     rescalable=rescalable)
    if check:
        _verify(spec, work, _as_tuple(example_input), seed, tol)
    return spec
