"""gauge: the symmetry ("gauge") group of neural networks, acting on their parameters.

Permutation specs inferred from a model's graph, permutations and ReLU rescalings, Hungarian
alignment (weight and activation matching), mask overlap, linear mode connectivity and
flatness, with gauge-fixed versions. A library: it never prints, parses arguments or touches
the disk. It depends on torch, numpy, scipy and networkx only (never on ``tickets``).

The names below are imported from their modules on first use, so that importing one
module (``gauge.errors``, say) does not import them all.
"""

from __future__ import annotations

import importlib

#: Public name -> the module that defines it.
_WHERE = {
    "GaugeError": "gauge.errors", "MismatchError": "gauge.errors", "SpecError": "gauge.errors",
    "TraceError": "gauge.errors", "ConnectError": "gauge.errors", "FlatnessError": "gauge.errors",
    "FlatnessOptionError": "gauge.errors", "EmptyParamsError": "gauge.errors",
    "NonFiniteLossError": "gauge.errors", "DataError": "gauge.errors",
    "check_same_keys": "gauge.errors",
    "PermutationSpec": "gauge.spec", "permuted_fraction": "gauge.spec",
    "infer_spec": "gauge.infer",
    "Permutation": "gauge.symmetry", "random_permutation": "gauge.symmetry",
    "identity_permutation": "gauge.symmetry", "apply_permutation": "gauge.symmetry",
    "invert": "gauge.symmetry", "compose": "gauge.symmetry", "random_scales": "gauge.symmetry",
    "random_rescaling": "gauge.symmetry", "apply_rescaling": "gauge.symmetry",
    "canonicalize_scale": "gauge.symmetry", "function_distance": "gauge.symmetry",
    "MatchResult": "gauge.match", "weight_matching": "gauge.match",
    "activation_matching": "gauge.match", "align": "gauge.match",
    "PathResult": "gauge.connect", "barriers": "gauge.connect", "interpolate": "gauge.connect",
    "linear_path": "gauge.connect", "evaluate_path": "gauge.connect",
    "LayerOverlap": "gauge.overlap", "OverlapMatrix": "gauge.overlap",
    "OverlapResult": "gauge.overlap", "aligned_mask_overlap": "gauge.overlap",
    "chance_jaccard": "gauge.overlap", "mask_overlap": "gauge.overlap",
    "overlap_matrix": "gauge.overlap",
    "HessianOperator": "gauge.hessian", "EigResult": "gauge.hessian",
    "TraceResult": "gauge.hessian", "Density": "gauge.hessian", "hvp": "gauge.hessian",
    "hessian_eigenvalues": "gauge.hessian", "hessian_trace": "gauge.hessian",
    "spectral_density": "gauge.hessian", "BlockCurvature": "gauge.hessian",
    "GaussNewtonObjective": "gauge.hessian", "parameter_blocks": "gauge.hessian",
    "SharpnessResult": "gauge.flatness", "Landscape1D": "gauge.flatness",
    "Landscape2D": "gauge.flatness", "sharpness": "gauge.flatness",
    "epsilon_sharpness": "gauge.flatness", "landscape_1d": "gauge.flatness",
    "landscape_2d": "gauge.flatness", "loss_at": "gauge.flatness",
    "GaugeFixed": "gauge.objective", "gauge_fix": "gauge.objective",
    "weights_only": "gauge.objective",
    "ManyAlignment": "gauge.many", "CycleConsistency": "gauge.many", "align_many": "gauge.many",
    "pairwise_matchings": "gauge.many", "cycle_consistency": "gauge.many",
    "QuotientDistance": "gauge.quotient", "quotient_distance": "gauge.quotient",
    "Consensus": "gauge.consensus", "ConsensusLayer": "gauge.consensus",
    "consensus": "gauge.consensus", "poisson_binomial": "gauge.consensus",
    "MergeResult": "gauge.merge", "average": "gauge.merge", "evaluate_merge": "gauge.merge",
    "CurveResult": "gauge.curve", "curve_path": "gauge.curve", "curve_point": "gauge.curve",
    "Drift": "gauge.similarity", "SeedSimilarity": "gauge.similarity",
    "SimilarityResult": "gauge.similarity", "linear_cka": "gauge.similarity",
    "similarity_across_seeds": "gauge.similarity", "weight_drift": "gauge.similarity",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'gauge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
