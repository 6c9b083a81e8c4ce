"""gauge: the symmetry ("gauge") group of neural networks, acting on their parameters.

Permutation specs inferred from a model's graph, permutations and ReLU rescalings, Hungarian
alignment (weight and activation matching), mask overlap, linear mode connectivity and
flatness, with gauge-fixed versions. A library: it never prints, parses arguments or touches
the disk. It depends on torch, numpy and scipy only (never on ``tickets``).
"""

from gauge.errors import GaugeError, MismatchError, SpecError, TraceError
from gauge.match import MatchResult, activation_matching, align, weight_matching
from gauge.spec import PermutationSpec, infer_spec
from gauge.symmetry import (Permutation, apply_permutation, apply_rescaling, canonicalize_scale,
                            compose, function_distance, identity_permutation, invert,
                            random_permutation, random_rescaling, random_scales)

__all__ = ["GaugeError", "MismatchError", "SpecError", "TraceError",
           "PermutationSpec", "infer_spec",
           "Permutation", "random_permutation", "identity_permutation", "apply_permutation",
           "invert", "compose", "random_scales", "random_rescaling", "apply_rescaling",
           "canonicalize_scale", "function_distance",
           "MatchResult", "weight_matching", "activation_matching", "align"]

# flatness (issue 6)
from gauge.errors import EmptyParamsError, FlatnessError, FlatnessOptionError, NonFiniteLossError  # noqa: E402
from gauge.flatness import (Density, EigResult, GaugeFixed, HessianOperator, Landscape1D,  # noqa: E402
                            Landscape2D, TraceResult, epsilon_sharpness, hessian_eigenvalues,
                            hessian_trace, hvp, landscape_1d, landscape_2d, sharpness,
                            spectral_density)

__all__ += ["EmptyParamsError", "FlatnessError", "FlatnessOptionError", "NonFiniteLossError",
            "Density", "EigResult", "GaugeFixed", "HessianOperator", "Landscape1D", "Landscape2D",
            "TraceResult", "epsilon_sharpness", "hessian_eigenvalues", "hessian_trace", "hvp",
            "landscape_1d", "landscape_2d", "sharpness", "spectral_density"]

# mode connectivity and mask overlap (issue 5)
from gauge.errors import ConnectError  # noqa: E402
from gauge.connect import PathResult, barriers, interpolate, linear_path  # noqa: E402
from gauge.overlap import (LayerOverlap, OverlapMatrix, OverlapResult,  # noqa: E402
                           aligned_mask_overlap, chance_jaccard, mask_overlap, overlap_matrix)

__all__ += ["ConnectError", "PathResult", "barriers", "interpolate", "linear_path",
            "LayerOverlap", "OverlapMatrix", "OverlapResult", "aligned_mask_overlap",
            "chance_jaccard", "mask_overlap", "overlap_matrix"]

# representation similarity and weight drift (gauge.similarity.similarity: the module keeps
# the name)
from gauge.similarity import (Drift, SeedSimilarity, SimilarityResult, linear_cka,  # noqa: E402
                              similarity_across_seeds, weight_drift)

__all__ += ["Drift", "SeedSimilarity", "SimilarityResult", "linear_cka",
            "similarity_across_seeds", "weight_drift"]
