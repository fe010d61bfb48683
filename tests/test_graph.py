"""ST-GCN spatial-partition adjacency."""

import numpy as np
import pytest

from msclr_core.conventions import REGISTRY, get_convention
from msclr_core.errors import ConfigError
from msclr_core.graph import adjacency, hop_to_center, normalized_adjacency


def reference_spatial(conv, max_hop):
    """ST-GCN graph.py's spatial strategy written out as its loops (independent check)."""
    V = conv.num_joints
    A = np.zeros((V, V))
    for i, j in conv.edges:
        A[i, j] = A[j, i] = 1
    hop = np.full((V, V), np.inf)
    reach = [np.linalg.matrix_power(A, d) > 0 for d in range(max_hop + 1)]
    for d in range(max_hop, -1, -1):
        hop[reach[d]] = d
    adj = ((hop == 0) | (hop == 1)).astype(float)
    norm = adj @ np.diag(1.0 / adj.sum(0))
    c = conv.center
    out = [np.where(hop == 0, norm, 0.0)]
    root, close, far = (np.zeros((V, V)) for _ in range(3))
    for i in range(V):
        for j in range(V):
            if hop[j, i] == 1:
                if hop[j, c] == hop[i, c]:
                    root[j, i] = norm[j, i]
                elif hop[j, c] > hop[i, c]:
                    close[j, i] = norm[j, i]
                else:
                    far[j, i] = norm[j, i]
    return np.stack(out + [root + close, far])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_matches_the_st_gcn_loops(name):
    conv = get_convention(name)
    official = adjacency(name)
    assert official.shape == (3, conv.num_joints, conv.num_joints) and official.dtype == np.float32
    np.testing.assert_allclose(official, reference_spatial(conv, max_hop=1), atol=1e-6)
    np.testing.assert_allclose(adjacency(conv, "hop"),
                               reference_spatial(conv, max_hop=conv.num_joints), atol=1e-6)


@pytest.mark.parametrize("partition", ["official", "hop"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_subsets_split_the_normalised_adjacency(name, partition):
    A = adjacency(name, partition)
    norm = normalized_adjacency(get_convention(name))
    np.testing.assert_allclose(A.sum(0), norm, atol=1e-6)
    np.testing.assert_allclose(A.sum(axis=(0, 1)), 1.0, atol=1e-6)  # column-normalised
    assert np.count_nonzero(A[0]) == A.shape[1]  # hop 0 = self-links only
    assert (np.count_nonzero(A, axis=0) <= 1).all()  # each entry in exactly one subset


def test_ntu_official_quirk_leaves_8_centrifugal_entries():
    A = adjacency("ntu-rgb+d")
    assert np.count_nonzero(A[2]) == 8
    center = 20  # spine-shoulder sends outwards to its 4 neighbours
    assert set(np.nonzero(A[2][center])[0]) == {1, 2, 4, 8}


def test_hop_partition_puts_every_outward_link_in_the_centrifugal_subset():
    A = adjacency("ntu-rgb+d", "hop")
    assert np.count_nonzero(A[2]) == 24 and np.count_nonzero(A[1]) == 24  # a tree: 24 edges
    assert np.count_nonzero(adjacency("ntu-rgb+d")[2]) < np.count_nonzero(A[2])


def test_hop_distances():
    ntu = get_convention("ntu-rgb+d")
    assert hop_to_center(ntu)[[20, 1, 0, 12, 15]].tolist() == [0, 1, 2, 3, 6]  # L-foot: 6 hops
    d1 = hop_to_center(ntu, max_hop=1)
    assert d1[0] == np.inf and d1[1] == 1
    mhad = hop_to_center(get_convention("berkeley_mhad_43"))
    assert mhad[0] == np.inf  # the head component is not reachable from the belly


def test_returns_copies_and_accepts_a_convention_object():
    A = adjacency("smplx_42")
    A[:] = 7
    np.testing.assert_array_equal(adjacency(get_convention("smplx_42")), adjacency("smplx_42"))
    assert adjacency("smplx_42").max() <= 1


def test_unknown_partition_is_a_config_error():
    with pytest.raises(ConfigError, match="'uniform'"):
        adjacency("ntu-rgb+d", partition="uniform")
