"""gauge: the symmetry ("gauge") group of neural networks, acting on their parameters.

Permutation specs inferred from a model's graph, permutations and ReLU rescalings, Hungarian
alignment (weight and activation matching), mask overlap, linear mode connectivity and
flatness, with gauge-fixed versions. A library: it never prints, parses arguments or touches
the disk. It depends on torch, numpy, scipy and networkx only (never on ``tickets``).
"""

from gauge.connect import PathResult, barriers, evaluate_path, interpolate, linear_path
from gauge.consensus import Consensus, ConsensusLayer, consensus, poisson_binomial
from gauge.curve import CurveResult, curve_path, curve_point
from gauge.errors import (ConnectError, DataError, EmptyParamsError, FlatnessError,
                          FlatnessOptionError, GaugeError, MismatchError, NonFiniteLossError,
                          SpecError, TraceError, check_same_keys)
from gauge.flatness import (Landscape1D, Landscape2D, SharpnessResult, epsilon_sharpness,
                            landscape_1d, landscape_2d, loss_at, sharpness)
from gauge.hessian import (Density, EigResult, HessianOperator, TraceResult, hessian_eigenvalues,
                           hessian_trace, hvp, spectral_density)
from gauge.hessian import BlockCurvature, GaussNewtonObjective, parameter_blocks
from gauge.infer import infer_spec
from gauge.many import (CycleConsistency, ManyAlignment, align_many, cycle_consistency,
                        pairwise_matchings)
from gauge.match import MatchResult, activation_matching, align, weight_matching
from gauge.merge import MergeResult, average, evaluate_merge
from gauge.objective import GaugeFixed, gauge_fix, weights_only
from gauge.overlap import (LayerOverlap, OverlapMatrix, OverlapResult, aligned_mask_overlap,
                           chance_jaccard, mask_overlap, overlap_matrix)
from gauge.quotient import QuotientDistance, quotient_distance
from gauge.similarity import (Drift, SeedSimilarity, SimilarityResult, linear_cka,
                              similarity_across_seeds, weight_drift)
from gauge.spec import PermutationSpec, permuted_fraction
from gauge.symmetry import (Permutation, apply_permutation, apply_rescaling, canonicalize_scale,
                            compose, function_distance, identity_permutation, invert,
                            random_permutation, random_rescaling, random_scales)

__all__ = ["GaugeError", "MismatchError", "SpecError", "TraceError", "ConnectError",
           "FlatnessError", "FlatnessOptionError", "EmptyParamsError", "NonFiniteLossError",
           "DataError",
           "check_same_keys",
           "PermutationSpec", "infer_spec", "permuted_fraction",
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
           "weights_only",
           "evaluate_path", "ManyAlignment", "CycleConsistency", "align_many",
           "pairwise_matchings", "cycle_consistency", "QuotientDistance", "quotient_distance",
           "Consensus", "ConsensusLayer", "consensus", "poisson_binomial", "MergeResult",
           "average", "evaluate_merge", "CurveResult", "curve_path", "curve_point",
           "Drift", "SeedSimilarity", "SimilarityResult", "linear_cka",
           "similarity_across_seeds", "weight_drift"]
