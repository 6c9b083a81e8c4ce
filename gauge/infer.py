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
    """Union-find over axis labels. A label may be factored into an ordered list of labels (a
    reshape's view of one axis as several: sizes multiply) or segmented into an ordered list of
    labels (a concatenation's pieces: sizes add); ``fixed`` labels are never permuted and
    ``bad`` labels are not rescalable."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.bad: list[bool] = []
        self.factors: dict[int, list[int]] = {}
        self.segments: dict[int, list[int]] = {}
        # root -> (order, why): why a fixed class is fixed; a union keeps the earliest reason
        self.why: dict[int, tuple[int, str]] = {}
        self.noted = 0

    def new(self, size: int, fixed: bool = False, why: str = "") -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(bool(fixed) or int(size) == 1)
        self.bad.append(False)
        if fixed and why:
            self._note(len(self.parent) - 1, why)
        return len(self.parent) - 1

    def _note(self, r: int, why: str) -> None:
        if why and r not in self.why:
            self.why[r] = (self.noted, why)
            self.noted += 1

    def reason(self, x: int) -> str:
        """Why ``x``'s class is held fixed (``""`` if no op said)."""
        return self.why.get(self.find(x), (0, ""))[1]

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def parts(self, r: int) -> list[int]:
        return self.factors.get(r, []) + self.segments.get(r, [])

    def _spread(self, flags: list[bool], x: int, why: str | None = None) -> None:
        """Set ``flags`` on ``x``'s class and, recursively, on its factors and segments (noting
        ``why`` on each class that has no reason yet)."""
        r = self.find(x)
        flags[r] = True
        if why is not None:
            self._note(r, why)
        for f in self.parts(r):
            if not flags[self.find(f)]:
                self._spread(flags, f, why)

    def fix(self, x: int, why: str = "") -> None:
        """Hold ``x``'s class (and its parts) fixed; ``why`` says which op requires it."""
        self._note(self.find(x), why)
        self._spread(self.fixed, x, self.reason(x))

    def mark_bad(self, x: int) -> None:
        self._spread(self.bad, x)

    def _settle(self, r: int) -> None:
        if r in self.factors and r in self.segments:  # viewed as a product and as a sum
            self.fix(r, "split both by a reshape and into concatenated pieces")
        if self.fixed[r]:
            self.fix(r)
        if self.bad[r]:
            self.mark_bad(r)

    def set_factors(self, x: int, parts: list[int]) -> None:
        r = self.find(x)
        self.factors[r] = list(parts)
        self._settle(r)

    def set_segments(self, x: int, parts: list[int]) -> None:
        r = self.find(x)
        self.segments[r] = list(parts)
        self._settle(r)

    def _merge_parts(self, table, rx, ry) -> None:
        fx, fy = table.pop(rx, None), table.pop(ry, None)
        if fx is not None and fy is not None:
            table[rx] = fx
            if [self.size[self.find(a)] for a in fx] == [self.size[self.find(b)] for b in fy]:
                for a, b in zip(fx, fy):
                    self.union(a, b)
            else:  # two incompatible views of one axis: keep it whole and unpermuted
                why = "split two incompatible ways (by reshapes or concatenations)"
                for a in fx + fy:
                    self.fix(a, why)
                self.fixed[rx] = True
                self._note(rx, why)
        elif fx is not None or fy is not None:
            table[rx] = fx if fx is not None else fy

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if self.size[rx] != self.size[ry]:
            raise _Unsupported(f"axes of sizes {self.size[rx]} and {self.size[ry]} are tied")
        self.parent[ry] = rx
        wy = self.why.pop(ry, None)
        if wy is not None and (rx not in self.why or wy < self.why[rx]):
            self.why[rx] = wy
        self.fixed[rx] = self.fixed[rx] or self.fixed[ry]
        self.bad[rx] = self.bad[rx] or self.bad[ry]
        self._merge_parts(self.factors, rx, ry)
        self._merge_parts(self.segments, rx, ry)
        self._settle(rx)

    def atoms(self, x: int, depth: int = 0) -> list[int]:
        """The labels whose sizes multiply to ``x``'s (size-1 ones dropped); a segmented
        label is an atom."""
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
    "bfloat16", "to", "type", "type_as", "abs", "neg", "identity", "cpu", "cuda", "requires_grad",
    "pos"}
_ELEMENTWISE_OTHER = {
    "gelu", "silu", "tanh", "sigmoid", "elu", "selu", "celu", "softplus", "mish", "hardswish",
    "hardtanh", "relu6", "hardsigmoid", "exp", "log", "sqrt", "rsqrt", "square", "pow", "sin",
    "cos", "erf", "softmax", "log_softmax", "clamp", "clip", "logsigmoid", "softsign",
    "tanhshrink", "reciprocal", "sign", "glu_"}
_BINARY = {"add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul", "div", "truediv",
           "rtruediv", "itruediv", "true_divide", "maximum", "minimum"}
_SELECT = {"where", "masked_fill", "masked_fill_"}
_CONSTRUCTORS = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like",
                 "ones_like", "full_like", "empty_like", "rand_like", "randn_like"}
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

    def __init__(self, model: nn.Module, nested: bool = False):
        super().__init__()
        self.nested = nested
        self.L = _Labels()
        self.labels: dict[int, list[int]] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.param_names: dict[int, list[str]] = {}
        self.param_labels: dict[str, list[int]] = {}
        self.param_ok: dict[str, bool] = {}
        self.module_stack: list[str] = []
        self.consumed: list[int] = []  # labels summed over invariantly (reductions, contractions)
        self.op = ""  # the op being handled, named in reasons
        self.used: set[str] = set()  # parameters some op read
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

    def get(self, t: torch.Tensor, why: str = "") -> list[int]:
        if id(t) not in self.labels:  # a constant or an input: never permuted
            why = why or f"a constant tensor met {self.at()}"
            self.set(t, [self.L.new(s, fixed=True, why=why) for s in t.shape])
        return self.labels[id(t)]

    def where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "<top level>"

    def at(self, name: str | None = None) -> str:
        """``"op 'name' in module m (Kind)"``: where a reason arose (default: the current op)."""
        return f"op {name or self.op!r} in module {self.where()}"

    def not_ok(self, t) -> None:
        for n in self.param_names.get(id(t), ()):
            self.param_ok[n] = False

    def bad_all(self, *ts) -> None:
        for t in ts:
            if isinstance(t, torch.Tensor):
                for lab in self.get(t):
                    self.L.mark_bad(lab)
                self.not_ok(t)

    def fixed_like(self, out, why: str = "") -> None:
        why = why or f"computed from unpermuted values by {self.at()}"
        for t in _tensors(out):
            self.set(t, [self.L.new(s, fixed=True, why=why) for s in t.shape])

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
        if self.nested:  # q, k, v thirds; q/k dims and v dims permute inside each head
            dqk, dv = self.L.new(d), self.L.new(d)
            self.consumed.append(dqk)
            thirds = []
            for inner in (dqk, dqk, dv):
                third = self.L.new(mod.num_heads * d)
                self.L.set_factors(third, [heads, inner])
                thirds.append(third)
            self.L.set_segments(lw[0], thirds)
        else:  # heads move as blocks in q, k and v alike; dims inside a head stay fixed
            inside = "dims inside a head stay in place (infer_spec(nested=True) permutes them)"
            dv = self.L.new(d, fixed=True, why=inside)
            self.L.set_factors(lw[0], [self.L.new(3, fixed=True, why="the q, k, v thirds of a "
                                                  "stacked in_proj_weight"),
                                       heads, self.L.new(d, fixed=True, why=inside)])
        if mod.in_proj_bias is not None:
            self.L.union(self.get(mod.in_proj_bias)[0], lw[0])
        lo = self.get(mod.out_proj.weight)
        self.L.set_factors(lo[1], [heads, dv])
        if mod.out_proj.bias is not None:
            self.L.union(self.get(mod.out_proj.bias)[0], lo[0])
        for t in (W, mod.in_proj_bias, mod.out_proj.weight, mod.out_proj.bias):
            if t is not None:
                self.bad_all(t)
        out, weights = output if isinstance(output, tuple) else (output, None)
        self.set(out, self.get(q)[:-1] + [lo[0]])
        if isinstance(weights, torch.Tensor):
            labs = [self.L.new(s, fixed=True, why=f"attention weights of {self.where()}")
                    for s in weights.shape]
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
        for t in inputs:
            self.used.update(self.param_names.get(id(t), ()))
        self.op = name
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
            if name == "type" and not isinstance(out, torch.Tensor):
                return  # ``x.type()`` names the dtype
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                return self._unknown(name, inputs, out)
            if name in _ELEMENTWISE_OTHER:
                self.bad_all(x)
            self.not_ok(x)
            self.set(out, self.get(x))
            return
        if name in _BINARY or name in _SELECT:
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
            return self._split(name, args, kwargs, out)
        if name == "getitem":
            return self._getitem(args, out)
        if name in ("matmul", "bmm", "mm"):
            return self._matmul(args, out)
        if name == "scaled_dot_product_attention":
            return self._sdpa(args, kwargs, out)
        if name in _CONSTRUCTORS:  # values independent of the input's
            return self.fixed_like(out, f"a new tensor made by {self.at()}")
        if name == "einsum":
            return self._einsum(args, out)
        if name in ("expand", "expand_as", "broadcast_to"):
            return self._expand(args, out)
        if name in ("pad", "roll"):
            return self._shift(name, args, kwargs, out)
        if name == "addmm":
            return self._addmm(args, kwargs, out)
        if name == "embedding":
            idx, w = args[0], args[1]
            lw = self.get(w)
            L.fix(lw[0], f"rows looked up by token id ({self.at()})")
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
                L.fix(ch, f"channels normalised in {groups} groups by {self.at()}")
            for t in inputs[1:]:
                L.union(self.get(t)[0], ch)
        self.bad_all(*inputs)
        self.set(out, self.get(x))

    def _pool(self, name, args, kwargs, out):
        x = args[0] if args else kwargs["input"]
        k = int(next(c for c in name if c.isdigit()))
        lead = self.get(x)[: x.dim() - k]
        for t in outs_of(out):
            self.set(t, lead + [self.L.new(s, fixed=True, why=f"positions pooled by {self.at()}")
                                for s in t.shape[len(lead):]])

    def _split(self, name, args, kwargs, out):
        """Pieces along ``dim`` are segments of the input axis (the inverse of cat)."""
        x = args[0]
        dim = int(_arg(args, kwargs, 2, "dim", 0)) % x.dim()
        labs = list(self.get(x))
        outs = outs_of(out)
        if all(t.dim() == x.dim() for t in outs) and len(outs) > 1:
            r = self.L.find(labs[dim])
            have = self.L.segments.get(r)
            if have is not None and [self.L.size[self.L.find(a)] for a in have] == \
                    [t.shape[dim] for t in outs]:
                pieces = have
            else:
                pieces = [self.L.new(t.shape[dim]) for t in outs]
                if r in self.L.segments or r in self.L.factors:
                    why = f"split by {self.at()} into pieces other than its own"
                    self.L.fix(labs[dim], why)
                    pieces = [self.L.new(t.shape[dim], True, why) for t in outs]
                else:
                    self.L.set_segments(labs[dim], pieces)
            for t, p in zip(outs, pieces):
                self.set(t, labs[:dim] + [p] + labs[dim + 1:])
            return
        why = f"taken apart position by position by {self.at()}"
        self.L.fix(labs[dim], why)
        for t in outs:
            if t.dim() == x.dim():
                self.set(t, labs[:dim] + [self.L.new(t.shape[dim], True, why)] + labs[dim + 1:])
            else:
                self.set(t, labs[:dim] + labs[dim + 1:])

    def _expand(self, args, out):
        """Broadcast axes hold copies: any permutation of them is exact, so they get free
        labels (tied to whatever they meet)."""
        x = args[0]
        labs = self.get(x)
        lead = out.dim() - x.dim()
        res = [self.L.new(s) for s in out.shape[:lead]]
        for d in range(x.dim()):
            o = lead + d
            res.append(labs[d] if x.shape[d] == out.shape[o] else self.L.new(out.shape[o]))
        self.not_ok(x)
        self.set(out, res)

    def _shift(self, name, args, kwargs, out):
        """``pad`` and ``roll`` act on positions: fine on unpermuted axes, refused on a permuted
        one (a zero-padded or rolled unit axis has an order)."""
        x = args[0]
        labs = list(self.get(x))
        if name == "pad":
            widths = list(_arg(args, kwargs, 1, "pad"))
            dims = [x.dim() - 1 - i // 2 for i in range(0, len(widths), 2)
                    if widths[i] or widths[i + 1]]
        else:
            dims = _dims(_arg(args, kwargs, 2, "dims"), x.dim())
        for d in dims:
            if any(self.L.is_free(a) for a in self.L.atoms(labs[d])):
                self.L.fix(labs[d], f"positions shifted by {self.at()}")
                raise _Unsupported(f"op {name!r} on axis {d} (size {x.shape[d]}), which would be "
                                   f"permuted, ties the units to their positions")
            if name == "pad":
                labs[d] = self.L.new(out.shape[d], fixed=True, why=f"padded by {self.at()}")
        self.not_ok(x)
        self.bad_all(x)
        self.set(out, labs)

    def _einsum(self, args, out):
        """Axes sharing a letter are tied; letters summed over are consumed invariantly."""
        L = self.L
        eq = args[0].replace(" ", "")
        ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) \
            else list(args[1:])
        if "..." in eq or "->" not in eq:
            return self._unknown("einsum", ops, out)
        lhs, rhs = eq.split("->")
        letters: dict[str, int] = {}
        for spec_, t in zip(lhs.split(","), ops):
            for ch, lab in zip(spec_, self.get(t)):
                if ch in letters:
                    if L.size[L.find(letters[ch])] == L.size[L.find(lab)]:
                        L.union(letters[ch], lab)
                    else:  # a broadcast letter of size 1 on one side
                        why = f"broadcast against size 1 by {self.at()}"
                        L.fix(lab, why)
                        L.fix(letters[ch], why)
                else:
                    letters[ch] = lab
            self.not_ok(t)
        self.bad_all(*ops)
        for ch, lab in letters.items():
            if ch not in rhs:
                self.consumed.append(lab)
        self.set(out, [letters[ch] for ch in rhs])

    def _addmm(self, args, kwargs, out):
        """``bias + m1 @ m2`` (transformers' Conv1D)."""
        L = self.L
        bias, m1, m2 = args[0], args[1], args[2]
        l1, l2 = self.get(m1), self.get(m2)
        L.union(l1[-1], l2[0])
        lb = self.get(bias)
        if bias.dim() >= 1 and bias.shape[-1] == out.shape[-1]:
            L.union(lb[-1], l2[1])
        self.set(out, [l1[0], l2[1]])

    def _binary(self, name, args, out):
        """Elementwise ops of broadcast operands (``where``/``masked_fill`` select between
        them by a condition that broadcasts the same way)."""
        L = self.L
        n_ops = 3 if name in _SELECT else 2
        ops = [a for a in args[:n_ops] if isinstance(a, torch.Tensor)]
        scalar = any(not isinstance(a, torch.Tensor) for a in args[:n_ops])
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
                out_labs[o] = L.new(out.shape[o], fixed=True,
                                    why=f"a broadcast axis of {self.at()}")
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
            why = f"an empty tensor reshaped by {self.at()}"
            for lab in labs:
                L.fix(lab, why)
            return [L.new(t, fixed=True, why=why) for t in out_shape]
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
            why = f"reshaped across unit boundaries by {self.at()}"
            for a in atoms:  # a reshape that cuts across units: keep those axes unpermuted
                L.fix(a, why)
            return [L.new(t, fixed=True, why=why) for t in sizes]
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
            L.fix(lab, "kernel taps (a conv kernel's spatial order)")
        if groups == 1:
            L.union(lx[c], lw[1])
        else:
            # conv group g maps input block g to output block g: the groups permute as whole
            # blocks (one label shared by both sides), output channels permute freely within
            # their block; input channels stay in place within their block (the weight would
            # need a different input permutation per output block)
            blocks = L.new(groups)
            inner_in = L.new(x.shape[c] // groups, fixed=True,
                             why=f"input channels within a conv group ({self.at()}, "
                                 f"groups={groups})")
            inner_out = L.new(w.shape[0] // groups)
            for lab, parts in ((lx[c], [blocks, inner_in]), (lw[0], [blocks, inner_out])):
                view = L.new(L.size[L.find(lab)])
                L.set_factors(view, parts)
                L.union(lab, view)
            L.fix(lw[1], L.reason(inner_in))
            self.bad_all(x, w)
        if b is not None:
            L.union(self.get(b)[0], lw[0])
        lead = lx[:c]
        self.set(out, lead + [lw[0]] + [L.new(s, fixed=True,
                                              why=f"spatial positions of the output of {self.at()}")
                                        for s in out.shape[c + 1:]])

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
            self.consumed.append(labs[d])
        self.not_ok(x)
        res = []
        for d in range(x.dim()):
            if d in dims:
                if keep:
                    res.append(L.new(1, fixed=True))
            else:
                res.append(labs[d])
        for t in outs_of(out):
            self.set(t, res if t.dim() == len(res) else
                     [L.new(s, True, f"computed by {self.at()}") for s in t.shape])

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
            self.set(out, base[:dim] + [L.new(len(ts), True, f"stacked by {self.at()}")]
                     + base[dim:])
            return
        dim %= nd
        base = list(self.get(ts[0]))
        for t in ts:
            labs = self.get(t)
            for d in range(nd):
                if d != dim:
                    L.union(base[d], labs[d])
        # each piece keeps its own units: the output axis is the sum of the pieces' axes
        pieces = [self.get(t)[dim] for t in ts if t.shape[dim] > 0]
        base[dim] = L.new(out.shape[dim])
        L.set_segments(base[dim], pieces)
        self.set(out, base)

    def _getitem(self, args, out):
        L = self.L
        x, idx = args[0], args[1]
        if not isinstance(idx, tuple):
            idx = (idx,)
        labs = self.get(x)
        tensor_at = [j for j, i in enumerate(idx) if isinstance(i, (torch.Tensor, list))]
        if len(tensor_at) == 1 and all(isinstance(i, slice) and i == slice(None)
                                       for j, i in enumerate(idx) if j != tensor_at[0]):
            j = tensor_at[0]  # one gather along axis j: the other axes pass through
            ind = idx[j] if isinstance(idx[j], torch.Tensor) else torch.tensor(idx[j])
            if not ind.dtype == torch.bool and out.dim() == x.dim() - 1 + ind.dim():
                why = f"gathered by an index tensor ({self.at()})"
                L.fix(labs[j], why)
                self.not_ok(x)
                self.set(out, labs[:j] + [L.new(s, True, why) for s in ind.shape]
                         + labs[j + 1:])
                return
        if any(isinstance(i, torch.Tensor) or isinstance(i, (list,)) for i in idx):
            why = f"advanced indexing ({self.at()})"
            for lab in labs:
                L.fix(lab, why)
            self.fixed_like(out, why)
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
                L.fix(labs[d], _index_reason(i, x.shape[d], self.at()))
                if isinstance(i, slice):
                    res.append(None)
            d += 1
        if not isinstance(out, torch.Tensor) or len(res) != out.dim():
            why = f"indexed by {self.at()}"
            for lab in labs:
                L.fix(lab, why)
            self.fixed_like(out, why)
            return
        self.set(out, [r if r is not None else L.new(out.shape[j], True, f"sliced by {self.at()}")
                       for j, r in enumerate(res)])

    def _matmul(self, args, out):
        L = self.L
        a, b = args[0], args[1]
        if a.dim() < 2 or b.dim() < 2:
            return self._unknown("matmul", [a, b], out)
        la, lb = self.get(a), self.get(b)
        L.union(la[-1], lb[-2])
        self.consumed.append(la[-1])
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
            lab = cand[0] if cand else L.new(out.shape[o], True, f"broadcast by {self.at()}")
            for c in cand[1:]:
                L.union(lab, c)
            batch.append(lab)
        self.set(out, batch + [la[-2], lb[-1]])

    def _sdpa(self, args, kwargs, out):
        L = self.L
        q, k, v = args[0], args[1], args[2]
        lq, lk, lv = self.get(q), self.get(k), self.get(v)
        L.union(lq[-1], lk[-1])
        self.consumed.append(lq[-1])
        L.union(lk[-2], lv[-2])
        for i in range(q.dim() - 2):
            L.union(lk[i], lv[i])
            if q.shape[i] != k.shape[i] and k.shape[i] and q.shape[i] % k.shape[i] == 0:
                # grouped-query attention: kv head j serves the query heads j*r .. j*r + r-1,
                # which may permute among themselves
                view = L.new(q.shape[i])
                L.set_factors(view, [lk[i], L.new(q.shape[i] // k.shape[i])])
                L.union(lq[i], view)
            else:
                L.union(lq[i], lk[i])
        mask = _arg(args, kwargs, 3, "attn_mask")
        if isinstance(mask, torch.Tensor):
            for lab in self.get(mask):
                L.fix(lab, f"attention mask of {self.at()}")
        self.bad_all(q, k, v)
        self.set(out, lq[:-1] + [lv[-1]])


def outs_of(out) -> list[torch.Tensor]:
    return _tensors(out)


def _index_reason(i, n: int, where: str) -> str:
    """Why an axis of size ``n`` indexed by ``i`` (an int or a slice) keeps its order."""
    if not isinstance(i, slice):
        return f"indexed at position {i} by {where}"
    a, b, c = i.start, i.stop, i.step
    text = f"[{'' if a is None else a}:{'' if b is None else b}{'' if c is None else f':{c}'}]"
    half = n % 2 == 0 and c in (None, 1) and {a or 0, n if b is None else b} in (
        {0, n // 2}, {n // 2, n}, {-(n // 2), n})
    if half:  # rotate_half: RoPE rotates dim i together with dim i + n/2 (Su et al. 2021)
        return (f"split in halves by slicing {text} ({where}): dims i and i+{n // 2} are "
                f"combined, as a rotary embedding pairs them")
    return f"sliced {text} by {where}"


def _as_tuple(example_input) -> tuple:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _shapes(inputs: tuple) -> str:
    return ", ".join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                     for t in inputs)


def _trace(model: nn.Module, example_input, nested: bool = False
           ) -> tuple["_Tracer", list[torch.Tensor], nn.Module]:
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
    tracer = _Tracer(work, nested)
    try:
        with torch.no_grad(), tracer:
            for t in _tensors(inputs):
                tracer.get(t, "network input")
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


class _Resolver:
    """Turns the traced labels into spec entries. Each param axis resolves to its atoms: at
    most one live unit (a free atom, an adjacent pair of free atoms read as blocks of units, or
    a concatenation whose pieces are such units or fixed); atoms it cannot represent are held
    fixed and the resolution repeats until nothing changes."""

    def __init__(self, tracer: "_Tracer", nested: bool):
        self.t, self.L, self.nested = tracer, tracer.L, nested
        self.nest: dict[int, int] = {}  # inner root -> outer root, fixed once seen

    def _unit(self, atoms: list[int], i: int):
        """Resolve live atom ``i`` of ``atoms`` (and its inner neighbour): (desc, last index)."""
        L = self.L
        a = atoms[i]
        r = L.find(a)
        if r in L.segments:
            return ("c", [self._piece(p) for p in L.segments[r]]), i
        if self.nested and i + 1 < len(atoms) and L.is_free(atoms[i + 1]) and \
                L.find(atoms[i + 1]) not in L.segments:
            x = L.find(atoms[i + 1])
            if self.nest.setdefault(x, r) == r:
                return ("n", r, x), i + 1
            L.fix(x, "the same dims sit inside blocks of two different groups")
            self.changed = True
        return ("g", r), i

    def _piece(self, lab: int):
        L = self.L
        atoms = L.atoms(lab)
        live = [i for i, a in enumerate(atoms) if L.is_free(a)]
        size = L.size[L.find(lab)]
        if not live:
            return ("f", size)
        desc, last = self._unit(atoms, live[0])
        covered = math.prod(L.size[L.find(a)] for a in atoms[live[0]:last + 1])
        if desc[0] == "c" or covered != size:  # a piece with its own layout: keep it fixed
            L.fix(lab, "a concatenated piece with a layout of its own")
            self.changed = True
            return ("f", size)
        return desc

    def axis(self, lab: int):
        """``(desc, repeat, block)`` of a param axis, or None if nothing on it moves."""
        L = self.L
        atoms = L.atoms(lab)
        live = [i for i, a in enumerate(atoms) if L.is_free(a)]
        if not live:
            return None
        desc, last = self._unit(atoms, live[0])
        for i in live:
            if i > last:
                L.fix(atoms[i], "units inside a block (e.g. dims inside a head) stay in place; "
                      "infer_spec(nested=True) permutes them" if not self.nested else
                      "units inside nested blocks stay in place (one level of nesting)")
                self.changed = True
        if desc[0] == "c" and all(p[0] == "f" for p in desc[1]):
            L.fix(atoms[live[0]], "; ".join(dict.fromkeys(
                w for w in (L.reason(p) for p in L.segments[L.find(atoms[live[0]])]) if w))
                or "every piece of the concatenation is fixed")
            self.changed = True
            return None
        r = math.prod(L.size[L.find(a)] for a in atoms[:live[0]])
        b = math.prod(L.size[L.find(a)] for a in atoms[last + 1:])
        return desc, r, b

    def resolve(self) -> dict[str, list]:
        """``param -> [axis desc | None]``, every unit consistent and used by two modules."""
        t = self.t
        while True:
            self.changed = False
            descs = {k: [self.axis(lab) for lab in labs] for k, labs in t.param_labels.items()}
            if self.changed:
                continue
            self._check_units(descs)
            if not self.changed:
                return descs

    def _check_units(self, descs) -> None:
        """Hold fixed a nested unit seen outside its blocks, and any unit no second module
        uses (weight and bias of one layer count once) unless an invariant reduction sums it."""
        L = self.L
        modules: dict[int, set[str]] = {}
        alone: set[int] = set()
        outers: set[int] = set()

        def visit(desc, module):
            if desc[0] == "c":
                for p in desc[1]:
                    visit(p, module)
            elif desc[0] == "g":
                modules.setdefault(desc[1], set()).add(module)
                alone.add(desc[1])
            elif desc[0] == "n":
                modules.setdefault(desc[2], set()).add(module)
                outers.add(desc[1])
        for k, ds in descs.items():
            for d in ds:
                if d is not None:
                    visit(d[0], k.rpartition(".")[0])
        for x in list(modules):
            if x in alone and x in self.nest:
                L.fix(x, "the same dims are used both inside blocks and as a whole axis")
                self.changed = True
        consumed = {L.find(a) for lab in self.t.consumed for a in L.atoms(lab)}
        unused = {k.rpartition(".")[0] for k in descs} - {
            k.rpartition(".")[0] for k in self.t.used}
        for root, mods in modules.items():
            if len(mods) < 2 and root not in consumed and root not in outers:
                mod = next(iter(mods)) or "<root>"
                L.fix(root, "not used by the forward pass on the example input (e.g. a head "
                      "run only in training mode)" if mods <= unused else
                      f"indexed by module {mod} alone: no other layer moves with it")
                self.changed = True


def _spec_entries(tracer: "_Tracer", descs):
    """Name the groups (after the first param using them) and write the ``from_axes``
    arguments: ``(axes, layouts, sizes, blocks, members)``."""
    L = tracer.L
    names: dict[int, str] = {}
    sizes: dict[str, int] = {}
    blocks: dict[str, tuple] = {}
    members: dict[str, list[Axis]] = {}

    def name_of(root, base, suffix=""):
        if root not in names:
            cand, n = base + suffix, 2
            while cand in names.values():
                cand, n = f"{base}{suffix}#{n}", n + 1
            names[root] = cand
        return names[root]

    def entry(desc, base):
        if desc[0] == "f":
            return desc[1]
        if desc[0] == "g":
            g = name_of(desc[1], base)
            sizes[g] = L.size[desc[1]]
            return g
        if desc[0] == "n":
            _, o, x = desc
            outer = name_of(o, base, ":blocks") if L.is_free(o) else None
            if outer is not None:
                sizes[outer] = L.size[o]
            g = name_of(x, base)
            sizes[g] = L.size[o] * L.size[x]
            blocks[g] = (outer, L.size[x])
            return g
        return tuple(entry(p, base) for p in desc[1])

    axes: dict[str, tuple] = {}
    layouts: dict[Axis, tuple[int, int]] = {}
    for k, ds in descs.items():
        base = k.rsplit(".", 1)[0] if "." in k else k
        row = []
        for ax, d in enumerate(ds):
            if d is None:
                row.append(None)
                continue
            desc, r, b = d
            e = entry(desc, base)
            if (r, b) != (1, 1):
                layouts[(k, ax)] = (r, b)
            row.append(e)
            for g in ([e] if isinstance(e, str) else [p for p in e if isinstance(p, str)]):
                members.setdefault(g, []).append((k, ax))
        axes[k] = tuple(row)
    return axes, layouts, sizes, blocks, members, names


def _reasons(tracer: "_Tracer") -> dict[Axis, str]:
    """``(param, axis) -> why`` for every param axis of size > 1 with a fixed part: the whole
    axis when nothing on it moves, else its fixed factors (a layout's repeat or block) and
    pieces. Distinct reasons of the parts are joined by ``"; "``."""
    L = tracer.L

    def fixed_parts(lab, depth=0) -> list[int]:
        out = []
        for a in L.atoms(lab):
            r = L.find(a)
            if L.fixed[r]:
                out.append(r)
            elif r in L.segments and depth < 64:
                out += [p for s in L.segments[r] for p in fixed_parts(s, depth + 1)]
        return out

    out: dict[Axis, str] = {}
    for k, labs in tracer.param_labels.items():
        for ax, lab in enumerate(labs):
            r = L.find(lab)
            if L.size[r] <= 1:
                continue
            parts = [r] if L.fixed[r] and L.reason(r) else fixed_parts(lab)
            why = "; ".join(dict.fromkeys(w for w in map(L.reason, parts) if w))
            if why:
                out[(k, ax)] = why
    return out


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
    seen: set[int] = set()
    once = []  # tied tensors (a shared embedding and LM head) go to functional_call once
    for k, v in work.state_dict(keep_vars=True).items():
        if id(v) not in seen:
            seen.add(id(v))
            once.append(k)
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
        p = {k: p[k] for k in once}
        with torch.no_grad():
            out = _tensors(torch.func.functional_call(work, p, inputs))
        return _relative_change(ref, out)

    with torch.no_grad():
        ref = _tensors(torch.func.functional_call(work, {k: params[k] for k in once}, inputs))
    err = change(spec.groups)
    if err <= tol:  # NaN fails too
        return
    culprit = next(((g, e) for g in spec.groups if not (e := change([g])) <= tol), None)
    what = (f"group {culprit[0]!r} ({', '.join(f'{k}[{ax}]' for k, ax in spec.perm_to_axes[culprit[0]][:6])}"
            f"{', ...' if len(spec.perm_to_axes[culprit[0]]) > 6 else ''}) changes them by "
            f"{culprit[1]:.3g}" if culprit else "no single group does; their combination does")
    raise TraceError(f"the inferred permutation spec of {type(work).__name__} changes its "
                     f"function (relative output change {err:.3g} > {tol:g}): {what}; some op is "
                     f"traced wrongly: pass a spec by hand with PermutationSpec.from_axes")


def infer_spec(model: nn.Module, example_input, *, nested: bool = True, check: bool = True,
               seed: int = 0, tol: float = 1e-4) -> PermutationSpec:
    """Infer the permutation spec of ``model`` by running it once on ``example_input``.

    ``example_input`` is a batch (a tensor, or a tuple of tensors passed positionally). The
    model is deep-copied and run in eval mode without gradients, so it is not changed.
    Supported ops: linear (and ``addmm``), conv1d/2d/3d (any groups), batch/instance/layer/group
    norm, elementwise activations, dropout, pooling, reshapes/flatten/transpose, ``expand``,
    ``pad``/``roll`` of unpermuted axes, residual adds and products, reductions, concatenation
    and splits (each piece keeps its own group), gathers along one axis, matmul, scaled
    dot-product attention (grouped-query too), embedding and
    :class:`torch.nn.MultiheadAttention`. The network's input and output axes are never permuted.

    Heads, grouped convolutions: heads (and conv groups) move as whole blocks, and the spec
    also permutes inside the blocks (nested groups, see :mod:`gauge.spec`): the q/k dims of each
    head (unless a rotary embedding pairs them; then they stay) and its v/output dims, the query
    heads sharing one key/value head, and the output channels within a conv group. A conv's
    input channels stay in place within their group, and with grouped-query attention the v
    dims stay in place (each would need an index that depends on another axis). With
    ``nested=False`` only whole blocks move (dims inside a head stay in place; heads whose
    q/k/v come from one fused projection that is split stay in place too), so every group is
    plain: a subgroup of the symmetry, for tools that need the one-group-per-axis format.

    With ``check`` (the default) the spec verifies itself before it is returned: one random
    permutation (drawn from ``seed``) and one random rescaling of the rescalable groups must
    leave the outputs on ``example_input`` unchanged up to ``tol`` (relative L2 change per output
    tensor). Turn it off only for models too large to run three times.

    Raises :class:`TraceError` for an op it cannot explain (naming op and module), for a model
    that cannot be deep-copied or run on ``example_input``, and for a spec that fails the check
    (naming the group).
    """
    tracer, outputs, work = _trace(model, example_input, nested)
    L = tracer.L
    for t in outputs:
        for lab in tracer.get(t):
            L.fix(lab, "network output")
    descs = _Resolver(tracer, nested).resolve()
    axes, layouts, sizes, blocks, members, names = _spec_entries(tracer, descs)
    roots = {g: r for r, g in names.items()}
    rescalable = []
    for g, ms in members.items():
        if g in blocks or L.bad[L.find(roots[g])] or \
                any(isinstance(axes[k][ax], tuple) for k, ax in ms):
            continue
        if all(tracer.param_ok[k] for k, _ in ms) and \
                any(ax == 0 for _, ax in ms) and any(ax > 0 for _, ax in ms):
            rescalable.append(g)
    rescalable = [g for g in rescalable if not any(o == g for o, _ in blocks.values())]
    sd_shapes = {k: tuple(v.shape) for k, v in work.state_dict().items()}
    spec = PermutationSpec.from_axes(axes, sd_shapes, sizes=sizes, layouts=layouts,
                                     rescalable=rescalable, blocks=blocks,
                                     reasons=_reasons(tracer))
    if check:
        _verify(spec, work, _as_tuple(example_input), seed, tol)
    return spec
