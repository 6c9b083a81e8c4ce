"""gauge: the symmetry ("gauge") group of neural networks, acting on their parameters.

Permutation specs inferred from a model's graph, permutations and ReLU rescalings, Hungarian
alignment (weight and activation matching), mask overlap, linear mode connectivity and
flatness, with gauge-fixed versions. A library: it never prints, parses arguments or touches
the disk. It depends on torch, numpy, scipy and networkx only (never on ``tickets``).
"""

from gauge.errors import GaugeError, MismatchError, SpecError, TraceError

__all__ = ["GaugeError", "MismatchError", "SpecError", "TraceError"]
