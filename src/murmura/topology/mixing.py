"""Mixing matrices: who averages with whom, and with what weights.

A mixing matrix ``W`` is ``[n, n]`` with ``W[i, j]`` the weight node ``i`` puts on node ``j``'s
model, so one gossip step is ``X <- W @ X``. Node ``j`` *sends* to node ``i`` iff ``W[i, j] != 0``
and ``i != j``. The engine applies ``W`` as one sparse product, so everything here is built in
sparse form and never as a dense ``n x n`` array.

Mixing rules turn an undirected graph into weights. A rule is a function
``rule(src, dst, degrees, n) -> (rows, cols, values)`` where ``src``/``dst`` list every undirected
edge once (``int64`` arrays, no self-loops, no duplicates), ``degrees[i]`` is node ``i``'s number of
neighbours, and the result is a COO triplet that must include the diagonal. Register your own in
:data:`MIXING`:

>>> import numpy as np
>>> from murmura.topology import MIXING, mixing_from_edges
>>> @MIXING.register("my_lazy_metropolis", "half metropolis, half staying put", overwrite=True)
... def lazy_metropolis(src, dst, degrees, n):
...     rows, cols, vals = MIXING.get("metropolis")(src, dst, degrees, n)
...     vals = 0.5 * vals + 0.5 * (rows == cols)
...     return rows, cols, vals
>>> W = mixing_from_edges(np.array([0, 1]), np.array([1, 2]), 3, weights="my_lazy_metropolis")
>>> W.is_doubly_stochastic
True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from murmura.registry import Registry

__all__ = [
    "MIXING",
    "MixingFn",
    "MixingMatrix",
    "metropolis",
    "uniform",
    "max_degree",
    "mixing_from_edges",
    "mixing_from_graph",
    "spectral_gap",
]

Triplet = tuple[np.ndarray, np.ndarray, np.ndarray]
MixingFn = Callable[[np.ndarray, np.ndarray, np.ndarray, int], Triplet]

MIXING: Registry[MixingFn] = Registry("mixing weights")

# Above these sizes a dense copy or a dense eigensolver is no longer a sensible default.
DENSE_LIMIT = 5_000
DENSE_EIG_LIMIT = 500
DENSE_EIG_FALLBACK_LIMIT = 2_000
STOCHASTIC_TOL = 1e-6


def _with_diagonal(
    src: np.ndarray, dst: np.ndarray, w_sd: np.ndarray, w_ds: np.ndarray, diag: np.ndarray
) -> Triplet:
    """COO triplet for weights on (src, dst), (dst, src) and the diagonal."""
    n = diag.shape[0]
    nodes = np.arange(n, dtype=np.int64)
    rows = np.concatenate([src, dst, nodes])
    cols = np.concatenate([dst, src, nodes])
    vals = np.concatenate([w_sd, w_ds, diag]).astype(np.float64, copy=False)
    return rows, cols, vals


@MIXING.register("metropolis", "Metropolis-Hastings: 1/(1+max(d_i, d_j)) on edges; symmetric")
def metropolis(src: np.ndarray, dst: np.ndarray, degrees: np.ndarray, n: int) -> Triplet:
    """Metropolis-Hastings weights: ``W_ij = 1/(1 + max(d_i, d_j))`` on edges, ``W_ii = 1 - sum``.

    Symmetric and doubly stochastic on every undirected graph, using only what two neighbours know
    about each other, which is why it is the default.

    >>> import numpy as np
    >>> rows, cols, vals = metropolis(np.array([0]), np.array([1]), np.array([1, 1]), 2)
    >>> sorted(zip(rows.tolist(), cols.tolist(), vals.tolist()))
    [(0, 0, 0.5), (0, 1, 0.5), (1, 0, 0.5), (1, 1, 0.5)]
    """
    deg = degrees.astype(np.float64)
    w = 1.0 / (1.0 + np.maximum(deg[src], deg[dst]))
    diag = 1.0 - np.bincount(src, w, minlength=n) - np.bincount(dst, w, minlength=n)
    return _with_diagonal(src, dst, w, w, diag)


@MIXING.register("uniform", "uniform with self: 1/(1+d_i) on N_i and i; row-stochastic only")
def uniform(src: np.ndarray, dst: np.ndarray, degrees: np.ndarray, n: int) -> Triplet:
    """Uniform-with-self weights: ``W_ij = 1/(1 + d_i)`` for ``j`` in ``N_i`` and ``j = i``.

    Every node takes the plain average of itself and its neighbours. The matrix is row-stochastic
    but doubly stochastic (and symmetric) only on regular graphs: on irregular graphs gossip with it
    converges to a degree-weighted average, not the plain one.

    >>> import numpy as np
    >>> rows, cols, vals = uniform(np.array([0, 0]), np.array([1, 2]), np.array([2, 1, 1]), 3)
    >>> float(vals[(rows == 0) & (cols == 1)][0]), float(vals[(rows == 1) & (cols == 0)][0])
    (0.3333333333333333, 0.5)
    """
    inv = 1.0 / (1.0 + degrees.astype(np.float64))
    return _with_diagonal(src, dst, inv[src], inv[dst], inv)


@MIXING.register("max_degree", "1/(1+d_max) on edges; symmetric, slow on irregular graphs")
def max_degree(src: np.ndarray, dst: np.ndarray, degrees: np.ndarray, n: int) -> Triplet:
    """Maximum-degree weights: ``W_ij = 1/(1 + d_max)`` on edges, ``W_ii = 1 - d_i/(1 + d_max)``.

    Symmetric and doubly stochastic, but needs the global maximum degree and mixes slowly where
    degrees vary a lot (low-degree nodes mostly keep their own model).

    >>> import numpy as np
    >>> rows, cols, vals = max_degree(np.array([0, 0]), np.array([1, 2]), np.array([2, 1, 1]), 3)
    >>> float(vals[(rows == 1) & (cols == 1)][0])
    0.6666666666666667
    """
    d_max = float(degrees.max()) if n > 0 else 0.0
    w = np.full(src.shape[0], 1.0 / (1.0 + d_max))
    diag = 1.0 - degrees.astype(np.float64) / (1.0 + d_max)
    return _with_diagonal(src, dst, w, w, diag)


def _to_torch_csr(a: sp.csr_array, device: torch.device | str | None) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch flags CSR as beta once per process; the engine relies on it deliberately.
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        t = torch.sparse_csr_tensor(
            torch.from_numpy(a.indptr.astype(np.int64)),
            torch.from_numpy(a.indices.astype(np.int64)),
            torch.from_numpy(a.data.astype(np.float32)),
            size=a.shape,
            dtype=torch.float32,
            check_invariants=False,
        )
    return t if device is None else t.to(device)


def _scipy_from_torch(t: torch.Tensor) -> sp.csr_array:
    n = t.shape[0]
    return sp.csr_array(
        (
            t.values().detach().cpu().numpy().astype(np.float64),
            t.col_indices().cpu().numpy(),
            t.crow_indices().cpu().numpy(),
        ),
        shape=(n, t.shape[1]),
    )


@dataclass(frozen=True)
class MixingMatrix:
    """One round's mixing matrix, in the sparse form the engine multiplies with.

    ``matrix`` is a torch sparse CSR float32 ``[n, n]`` tensor; ``out_degree[j]`` / ``in_degree[i]``
    count the *other* nodes ``j`` sends to / ``i`` receives from (off-diagonal nonzeros per column /
    per row), so traffic is ``out_degree * bytes_per_message``. ``is_symmetric`` and
    ``is_doubly_stochastic`` are checked numerically (tolerance 1e-6) when the matrix is built.

    >>> import numpy as np
    >>> W = MixingMatrix.from_coo(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]),
    ...                           np.full(4, 0.5), 2)
    >>> W.out_degree.tolist(), W.is_doubly_stochastic, W.spectral_gap()
    ([1, 1], True, 1.0)
    """

    matrix: torch.Tensor
    num_nodes: int
    out_degree: torch.Tensor
    in_degree: torch.Tensor
    is_symmetric: bool
    is_doubly_stochastic: bool
    # Shared between device copies: the spectrum does not depend on where the tensor lives.
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_scipy(
        cls, a: sp.sparray | sp.spmatrix, device: torch.device | str | None = None
    ) -> MixingMatrix:
        """Build from any scipy sparse ``[n, n]`` matrix (duplicates summed, zeros dropped)."""
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"a mixing matrix must be square [n, n], got shape {a.shape}")
        csr = sp.csr_array(a, dtype=np.float64)
        csr.sum_duplicates()
        # Explicit zeros would be counted as messages that never carry any weight.
        csr.eliminate_zeros()
        csr.sort_indices()
        n = csr.shape[0]
        if not np.all(np.isfinite(csr.data)):
            raise ValueError("a mixing matrix must be finite; it contains NaN or Inf weights")
        # Degrees, sums and the symmetry test straight from the CSR arrays: for a 10^8-nonzero
        # matrix every avoided temporary is ~1 GB.
        has_diag = (csr.diagonal() != 0).astype(np.int64)
        in_deg = np.diff(csr.indptr).astype(np.int64) - has_diag
        out_deg = np.bincount(csr.indices, minlength=n).astype(np.int64) - has_diag
        tol = STOCHASTIC_TOL
        t = csr.T.tocsr()
        t.sort_indices()
        if np.array_equal(t.indptr, csr.indptr) and np.array_equal(t.indices, csr.indices):
            is_sym = bool(np.all(np.abs(t.data - csr.data) <= tol))
        else:  # different supports can still agree within tol (tiny one-sided weights)
            diff = abs(csr - t)
            is_sym = bool(diff.nnz == 0 or diff.max() <= tol)
        del t
        row_sums = np.add.reduceat(csr.data, csr.indptr[:-1]) if csr.nnz else np.zeros(n)
        row_sums[np.diff(csr.indptr) == 0] = 0.0  # reduceat repeats a value for empty rows
        col_sums = np.bincount(csr.indices, weights=csr.data, minlength=n)
        is_ds = bool(
            np.all(csr.data >= -tol)
            and np.all(np.abs(row_sums - 1.0) <= tol)
            and np.all(np.abs(col_sums - 1.0) <= tol)
        )
        dev = torch.device("cpu") if device is None else torch.device(device)
        return cls(
            matrix=_to_torch_csr(csr, dev),
            num_nodes=n,
            out_degree=torch.from_numpy(out_deg).to(dev),
            in_degree=torch.from_numpy(in_deg).to(dev),
            is_symmetric=is_sym,
            is_doubly_stochastic=is_ds,
        )

    @classmethod
    def from_coo(
        cls,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        n: int,
        device: torch.device | str | None = None,
    ) -> MixingMatrix:
        """Build from a COO triplet; repeated ``(row, col)`` entries are summed."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if not (rows.shape == cols.shape == values.shape):
            raise ValueError(
                f"rows, cols and values must have the same length, got {rows.shape}, "
                f"{cols.shape}, {values.shape}"
            )
        return cls.from_scipy(sp.coo_array((values, (rows, cols)), shape=(n, n)), device)

    @classmethod
    def from_dense(
        cls, w: torch.Tensor | np.ndarray, device: torch.device | str | None = None
    ) -> MixingMatrix:
        """Build from a small dense ``[n, n]`` matrix (tests, hand-written examples)."""
        arr = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        return cls.from_scipy(sp.csr_array(arr.astype(np.float64)), device)

    def __repr__(self) -> str:
        return (
            f"MixingMatrix(n={self.num_nodes}, nnz={self.matrix.values().numel()}, "
            f"symmetric={self.is_symmetric}, doubly_stochastic={self.is_doubly_stochastic}, "
            f"device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def to(self, device: torch.device | str) -> MixingMatrix:
        """The same matrix on ``device`` (degree tensors move with it)."""
        dev = torch.device(device)
        return MixingMatrix(
            matrix=self.matrix.to(dev),
            num_nodes=self.num_nodes,
            out_degree=self.out_degree.to(dev),
            in_degree=self.in_degree.to(dev),
            is_symmetric=self.is_symmetric,
            is_doubly_stochastic=self.is_doubly_stochastic,
            _cache=self._cache,
        )

    def dense(self) -> torch.Tensor:
        """Dense ``[n, n]`` copy for small swarms (inspection, tests, drawing)."""
        if self.num_nodes > DENSE_LIMIT:
            raise ValueError(
                f"refusing a dense copy of a mixing matrix on {self.num_nodes} nodes (limit "
                f"{DENSE_LIMIT}): it would need {self.num_nodes**2 * 4 / 2**30:.1f} GiB; work with "
                f".matrix (sparse CSR) or .to_scipy() instead"
            )
        return self.matrix.to_dense()

    def to_scipy(self) -> sp.csr_array:
        """A float64 scipy CSR copy on the CPU."""
        return _scipy_from_torch(self.matrix)

    @property
    def num_messages(self) -> int:
        """Number of (sender, receiver) links with nonzero weight."""
        return int(self.in_degree.sum().item())

    def spectral_gap(self) -> float:
        """``1 - |lambda_2(W)|``: one minus the second-largest eigenvalue modulus (cached).

        Larger is better: gossip error shrinks roughly like ``(1 - gap)^t``. It is 0 when the
        graph is disconnected, and 1 for a single node by convention.
        """
        if "spectral_gap" not in self._cache:
            self._cache["spectral_gap"] = _spectral_gap_scipy(
                self.to_scipy(), self.is_symmetric, self.is_doubly_stochastic
            )
        return float(self._cache["spectral_gap"])


def _spectral_gap_dense(a: sp.csr_array, symmetric: bool) -> float:
    # torch's LAPACK, not numpy's: numpy's OpenBLAS threads fight torch's OpenMP threads once
    # torch is imported (a 700-node eigvals went from 0.2 s to 7 s on 2 cores).
    dense = torch.from_numpy(a.toarray())
    if symmetric:
        ev = torch.linalg.eigvalsh((dense + dense.T) / 2).abs()
    else:
        ev = torch.linalg.eigvals(dense).abs()
    moduli = np.sort(ev.numpy())[::-1]
    return float(max(0.0, 1.0 - moduli[1]))


def _spectral_gap_scipy(a: sp.csr_array, symmetric: bool, doubly_stochastic: bool) -> float:
    n = a.shape[0]
    if n == 1:
        return 1.0
    if n <= DENSE_EIG_LIMIT:
        return _spectral_gap_dense(a, symmetric)
    # ARPACK needs ever more restarts as the gap shrinks (a 10^5-node ring's is ~1e-9); bound the
    # work so a hopeless case fails in seconds, not hours.
    maxiter = int(min(1000, max(100, 1e7 / max(a.nnz, 1))))
    try:
        if doubly_stochastic:
            # The all-ones vector is then both a left and a right eigenvector for eigenvalue 1:
            # deflating it leaves lambda_2 as the top eigenvalue, which ARPACK finds far faster.
            ones = np.full(n, 1.0 / n)

            def matvec(x: np.ndarray) -> np.ndarray:
                x = np.asarray(x).ravel()
                return a @ x - ones * x.sum()

            op = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
            if symmetric:
                ev = spla.eigsh(op, k=1, which="LM", return_eigenvectors=False, maxiter=maxiter)
            else:
                # Non-symmetric spectra come in conjugate pairs of equal modulus; asking for a few
                # more keeps ARPACK from returning one of a pair and skipping the other.
                ev = spla.eigs(op, k=4, which="LM", return_eigenvectors=False, maxiter=maxiter)
            second = float(np.abs(ev).max())
        elif symmetric:
            ev = spla.eigsh(a, k=2, which="LM", return_eigenvectors=False, maxiter=maxiter)
            second = float(np.sort(np.abs(ev))[::-1][1])
        else:
            ev = spla.eigs(a, k=6, which="LM", return_eigenvectors=False, maxiter=maxiter)
            second = float(np.sort(np.abs(ev))[::-1][1])
    except spla.ArpackNoConvergence as err:
        if n <= DENSE_EIG_FALLBACK_LIMIT:
            return _spectral_gap_dense(a, symmetric)
        raise ValueError(
            f"the eigensolver did not converge computing the spectral gap of a {n}-node mixing "
            f"matrix (the gap is probably tiny, or |lambda_2| is shared by many eigenvalues); "
            f"compute it on a smaller instance (n <= {DENSE_EIG_FALLBACK_LIMIT} always works)"
        ) from err
    return float(max(0.0, 1.0 - second))


def _canonical_edges(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each undirected edge once as (min, max), self-loops dropped, sorted."""
    src = np.asarray(src, dtype=np.int64).ravel()
    dst = np.asarray(dst, dtype=np.int64).ravel()
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same length, got {src.shape} and {dst.shape}")
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise ValueError(f"edge endpoints must be node ids in [0, {n}), got values outside it")
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    keep = lo != hi
    keys = np.sort(lo[keep] * n + hi[keep])
    # Sort-and-mask rather than np.unique, whose hash-based path is ~10x slower on 10^6 keys.
    if keys.size > 1:
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    return keys // n, keys % n


def resolve_mixing(weights: str | MixingFn) -> tuple[str, MixingFn]:
    """``(name, rule)`` for a registered name or a user callable."""
    if callable(weights):
        return getattr(weights, "__name__", "custom"), weights
    if not isinstance(weights, str):
        raise ValueError(
            f"weights must be the name of a mixing rule ({', '.join(MIXING.names())}) or a "
            f"callable rule(src, dst, degrees, n), got {weights!r}"
        )
    return weights, MIXING.get(weights)


def mixing_from_edges(
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    *,
    weights: str | MixingFn = "metropolis",
    device: torch.device | str | None = None,
) -> MixingMatrix:
    """Mixing matrix of the undirected graph with edges ``(src[e], dst[e])`` on nodes ``0..n-1``.

    Edges may be listed in either direction or twice; self-loops are ignored (the rule sets the
    diagonal).

    >>> import numpy as np
    >>> W = mixing_from_edges(np.array([0, 1, 2]), np.array([1, 2, 0]), 3)
    >>> round(W.dense()[0, 1].item(), 4), W.in_degree.tolist()
    (0.3333, [2, 2, 2])
    """
    n = _check_n(n)
    lo, hi = _canonical_edges(src, dst, n)
    degrees = np.bincount(lo, minlength=n) + np.bincount(hi, minlength=n)
    _, rule = resolve_mixing(weights)
    rows, cols, vals = rule(lo, hi, degrees, n)
    return MixingMatrix.from_coo(rows, cols, vals, n, device)


def graph_edges(graph: nx.Graph) -> tuple[np.ndarray, np.ndarray, int]:
    """``(src, dst, n)`` of an undirected networkx graph whose nodes are ``0..n-1``."""
    if graph.is_directed():
        raise ValueError(
            "mixing weights are defined for undirected graphs, got a directed one; pass "
            "graph.to_undirected() or build a MixingMatrix directly with MixingMatrix.from_coo"
        )
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise ValueError(
            "graph nodes must be the integers 0..n-1; relabel with "
            "networkx.convert_node_labels_to_integers(graph)"
        )
    if graph.number_of_edges() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, n
    e = np.asarray(list(graph.edges()), dtype=np.int64)
    return e[:, 0], e[:, 1], n


def mixing_from_graph(
    graph: nx.Graph,
    *,
    weights: str | MixingFn = "metropolis",
    device: torch.device | str | None = None,
) -> MixingMatrix:
    """Mixing matrix of an undirected networkx graph with nodes ``0..n-1``.

    >>> import networkx as nx
    >>> W = mixing_from_graph(nx.complete_graph(4))
    >>> W.is_doubly_stochastic, round(W.spectral_gap(), 6)
    (True, 1.0)
    """
    src, dst, n = graph_edges(graph)
    return mixing_from_edges(src, dst, n, weights=weights, device=device)


def spectral_gap(w: Any) -> float:
    """``1 - |lambda_2|`` of a mixing matrix given in any common form.

    Accepts a :class:`MixingMatrix`, a static :class:`~murmura.topology.Topology`, a torch tensor
    (sparse or dense), a scipy sparse matrix, a numpy array, or an undirected networkx graph (with
    Metropolis weights).

    >>> import numpy as np
    >>> round(spectral_gap(np.full((3, 3), 1 / 3)), 6)
    1.0
    """
    if isinstance(w, MixingMatrix):
        return w.spectral_gap()
    if hasattr(w, "spectral_gap") and callable(w.spectral_gap):
        return float(w.spectral_gap())
    if isinstance(w, nx.Graph):
        return mixing_from_graph(w).spectral_gap()
    if isinstance(w, torch.Tensor):
        if w.layout == torch.sparse_csr:
            return MixingMatrix.from_scipy(_scipy_from_torch(w)).spectral_gap()
        if w.is_sparse:
            w = w.coalesce()
            idx = w.indices().cpu().numpy()
            vals = w.values().detach().cpu().numpy()
            return MixingMatrix.from_coo(idx[0], idx[1], vals, w.shape[0]).spectral_gap()
        return MixingMatrix.from_dense(w).spectral_gap()
    if sp.issparse(w):
        return MixingMatrix.from_scipy(w).spectral_gap()
    return MixingMatrix.from_dense(np.asarray(w, dtype=np.float64)).spectral_gap()


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(
            f"n (the number of nodes) must be an integer >= 1, got {n!r}; pass the swarm size"
        )
    return int(n)
