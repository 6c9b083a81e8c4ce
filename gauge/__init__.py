"""gauge: the symmetry ("gauge") group of neural networks, acting on their parameters.

Permutation specs inferred from a model's graph, permutations and ReLU rescalings, Hungarian
alignment (weight and activation matching), mask overlap, linear mode connectivity and
flatness, with gauge-fixed versions. A library: it never prints, parses arguments or touches
the disk. It depends on torch, numpy and scipy only (never on ``tickets``).
"""

from gauge.connect import PathResult, barriers, interpolate, linear_path
from gauge.errors import (ConnectError, EmptyParamsError, FlatnessError, FlatnessOptionError,
                          GaugeError, MismatchError, NonFiniteLossError, SpecError, TraceError,
                          check_same_keys)
from gauge.flatness import (Landscape1D, Landscape2D, SharpnessResult, epsilon_sharpness,
                            landscape_1d, landscape_2d, loss_at, sharpness)
from gauge.hessian import (Density, EigResult, HessianOperator, TraceResult, hessian_eigenvalues,
                           hessian_trace, hvp, spectral_density)
from gauge.hessian import BlockCurvature, GaussNewtonObjective, parameter_blocks
from gauge.infer import infer_spec
from gauge.match import MatchResult, activation_matching, align, weight_matching
from gauge.objective import GaugeFixed, gauge_fix, weights_only
from gauge.overlap import (LayerOverlap, OverlapMatrix, OverlapResult, aligned_mask_overlap,
                           chance_jaccard, mask_overlap, overlap_matrix)
from gauge.spec import PermutationSpec
from gauge.symmetry import (Permutation, apply_permutation, apply_rescaling, canonicalize_scale,
                            compose, function_distance, identity_permutation, invert,
                            random_permutation, random_rescaling, random_scales)

__all__ = ["GaugeError", "MismatchError", "SpecError", "TraceError", "ConnectError",
           "FlatnessError", "FlatnessOptionError", "EmptyParamsError", "NonFiniteLossError",
           "check_same_keys",
           "PermutationSpec", "infer_spec",
           "Permutation", "random_permutation", "identity_permutation", "apply_permutation",
           "invert", "compose", "random_scales", "random_rescaling", "apply_rescaling",
           "canonicalize_scale", "function_distance",
           "MatchResult", "weight_matching", "activation_matching", "align",
           "PathResult", "barriers", "interpolate", "linear_path",
           "LayerOverlap", "OverlapMatrix", "OverlapResult", "aligned_mask_overlap",
           "chance_jaccard", "mask_overlap", "overlap_matrix",
           "HessianOperator", "EigResult", "TraceResult", "Density", "hvp",
           "hessian_eigenvalues", "hessian_trace", "spectral_density",
           "BlockCurvature", "GaussNewtonObjective", "parameter_blocks",
           "SharpnessResult", "Landscape1D", "Landscape2D", "GaugeFixed", "sharpness",
           "epsilon_sharpness", "landscape_1d", "landscape_2d", "loss_at", "gauge_fix",
           "weights_only"]
