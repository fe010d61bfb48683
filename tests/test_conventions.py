"""The skeleton conventions registry: structure, official tables, flips, CLI."""

import json

import pytest

from msclr_core.conventions import (
    REGISTRY, Convention, flip_from_names, get_convention, list_conventions, parents_from_edges,
    validate)
from msclr_core.errors import ConfigError
from msclr_platform.cli import main as cli_main

REQUIRED = ["ntu-rgb+d", "smpl_24", "smplx_42", "berkeley_mhad_43", "h36m_17", "coco_17",
            "mpi_inf_3dhp_28", "mediapipe_33", "openpose_25", "kinectv2_25"]

# Joints that lie on the body's midline (flip maps them to themselves), written by hand.
MIDDLE = {
    "ntu-rgb+d": "spine-base spine-mid neck head spine-shoulder",
    "smpl_24": "pelv spi1 spi2 spi3 neck head",
    "smplx_42": "pelv bell spin thor neck head jaw nose",
    "berkeley_mhad_43": "head backl backt bell chest",
    "h36m_17": "pelv spin neck head htop",
    "coco_17": "nose",
    "mpi_inf_3dhp_28": "thor spi4 spi2 spin pelv neck head htop",
    "mediapipe_33": "nose",
    "openpose_25": "Nose Neck MidHip",
    "kinectv2_25": "spinebase spinemid neck head spineshoulder",
}

# Spec section 3, 0-based official flips (berkeley written out from its ranges).
OFFICIAL_FLIP = {
    "ntu-rgb+d": [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 20, 23,
                  24, 21, 22],
    "smplx_42": [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 22,
                 24, 23, 26, 25, 27, 29, 28, 31, 30, 35, 36, 37, 32, 33, 34, 40, 41, 38, 39],
    "berkeley_mhad_43": [0, 2, 1, 6, 4, 5, 3, 10, 8, 9, 7, *range(19, 27), *range(11, 19),
                         *range(35, 43), *range(27, 35)],
}


def components(conv):
    """Connected components of the undirected edge graph (union-find)."""
    rep = list(range(conv.num_joints))

    def find(j):
        while rep[j] != j:
            j = rep[j]
        return j

    for a, b in conv.edges:
        rep[find(a)] = find(b)
    return len({find(j) for j in range(conv.num_joints)})


def test_registry_holds_every_required_convention():
    assert set(REQUIRED) <= set(list_conventions())
    assert all(REGISTRY[n].name == n for n in REGISTRY)


@pytest.mark.parametrize("name", REQUIRED)
def test_convention_is_well_formed(name):
    conv = get_convention(name)
    V = conv.num_joints
    validate(conv)
    assert len(set(conv.joint_names)) == V
    assert 0 <= conv.center < V and conv.parents[conv.center] == -1
    assert all(0 <= a < V and 0 <= b < V and a != b for a, b in conv.edges)
    # a forest: following parents from any joint reaches a root without repeating a joint
    for j in range(V):
        seen = []
        while j != -1:
            assert j not in seen and -1 <= conv.parents[j] < V
            seen.append(j)
            j = conv.parents[j]
    # every bone is a graph edge, and there is one root per connected component
    undirected = {frozenset(e) for e in conv.edges}
    assert all(frozenset(b) in undirected for b in conv.bones)
    assert sum(p == -1 for p in conv.parents) == components(conv)
    assert sorted(conv.flip) == list(range(V))
    assert all(conv.flip[conv.flip[j]] == j for j in range(V))
    assert (conv.unit, conv.dims) in {("m", 3), ("mm", 3), ("px", 2)}


@pytest.mark.parametrize("name", REQUIRED)
def test_flip_maps_left_to_right_twin_and_keeps_the_middle(name):
    conv = get_convention(name)
    middle = set(MIDDLE[name].split())
    assert middle <= set(conv.joint_names)
    for j, n in enumerate(conv.joint_names):
        twin = conv.joint_names[conv.flip[j]]
        if n in middle:
            assert twin == n
            continue
        assert twin != n
        # the twin differs only by the side marker: swap it back and compare
        swapped = [n.replace(a, b, 1) for a, b in [("L-", "R-"), ("R-", "L-"), ("left", "right"),
                                                    ("right", "left"), ("L", "R"), ("R", "L"),
                                                    ("l", "r"), ("r", "l")]]
        assert twin in swapped, (n, twin)


@pytest.mark.parametrize("name", sorted(OFFICIAL_FLIP))
def test_flip_equals_the_official_permutation(name):
    assert list(get_convention(name).flip) == OFFICIAL_FLIP[name]


def test_smpl_24_flip_is_the_corrected_one():
    flip = get_convention("smpl_24").flip
    official_buggy = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20,
                      22, 24]
    assert max(flip) == 23 and (flip[22], flip[23]) == (23, 22)
    assert list(flip[:22]) == official_buggy[:22]


@pytest.mark.parametrize("name", ["ntu-rgb+d", "smpl_24"])
def test_derived_bones_equal_the_official_child_parent_edges(name):
    conv = get_convention(name)
    assert sorted(conv.bones) == sorted(conv.edges)
    assert [j for j, p in enumerate(conv.parents) if p == -1] == [conv.center]


def test_ntu_tables_match_the_spec():
    ntu = get_convention("ntu-rgb+d")
    assert ntu.num_joints == 25 and ntu.center == 20 and ntu.unit == "m"
    assert ntu.joint_names[20] == "spine-shoulder" and ntu.joint_names[4] == "L-shoulder"
    assert ntu.edges[0] == (0, 1) and ntu.edges[-1] == (24, 11) and len(ntu.edges) == 24
    assert ntu.parents[0] == 1  # spine-base hangs on spine-mid


def test_centers_of_the_official_conventions():
    assert {n: get_convention(n).center for n in ["ntu-rgb+d", "smpl_24", "smplx_42",
                                                   "berkeley_mhad_43"]} == {
        "ntu-rgb+d": 20, "smpl_24": 9, "smplx_42": 9, "berkeley_mhad_43": 8}


def test_smplx_isolated_eye_joints_are_roots():
    conv = get_convention("smplx_42")
    assert len(conv.edges) == 39
    assert [j for j, p in enumerate(conv.parents) if p == -1] == [9, 23, 24]
    assert conv.joint_names[23:25] == ("leyehf", "reyehf")


def test_berkeley_mhad_every_non_root_joint_gets_exactly_one_bone():
    conv = get_convention("berkeley_mhad_43")
    roots = [j for j, p in enumerate(conv.parents) if p == -1]
    assert roots == [0, 8, 11]  # head, bell (center), lsho1: one per component
    children = [c for c, _ in conv.bones]
    assert sorted(children) == [j for j in range(43) if j not in roots]
    # the official bug: reading the unordered edges as (child, parent) overwrites bones and
    # leaves joints without one
    official_children = [a for a, _ in conv.edges]
    assert len(set(official_children)) < len(official_children)
    assert set(range(43)) - set(official_children) - set(roots)


def test_parents_from_edges_on_a_graph_with_a_cycle_and_two_components():
    # 0-1-2-0 triangle, 2-3, and a separate 4-5; center 1
    parents = parents_from_edges(6, [(0, 1), (1, 2), (2, 0), (2, 3), (4, 5)], center=1)
    assert parents == (1, -1, 1, 2, -1, 4)


def test_flip_from_names_rejects_a_missing_twin():
    assert flip_from_names(["head", "lsho", "rsho", "rear", "lear"]) == (0, 2, 1, 4, 3)
    assert flip_from_names(["root", "lone"]) == (0, 1)  # no twin: a middle joint
    with pytest.raises(ConfigError, match="R-knee"):
        flip_from_names(["L-knee", "head"], "demo")


def test_validate_rejects_a_cyclic_parent_array():
    bad = Convention("bad", ("a", "b"), parents=(1, 0), edges=((0, 1),), center=0, flip=(0, 1))
    with pytest.raises(ConfigError, match="cyclic"):
        validate(bad)


def test_unknown_convention_is_a_config_error_and_a_key_error():
    with pytest.raises(KeyError):
        get_convention("nope_7")
    with pytest.raises(ConfigError, match="'nope_7'.*ntu-rgb\\+d"):
        get_convention("nope_7")
    assert get_convention(REGISTRY["h36m_17"]) is REGISTRY["h36m_17"]


def test_cli_json_lists_every_convention(capsys):
    assert cli_main(["conventions", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_name = {d["name"]: d for d in doc}
    assert set(REQUIRED) <= set(by_name)
    for name, d in by_name.items():
        conv = get_convention(name)
        assert {"name", "num_joints", "joint_names", "parents", "edges", "center", "flip",
                "unit", "dims"} <= set(d)
        assert d["num_joints"] == len(d["joint_names"]) == len(d["parents"]) == len(d["flip"])
        assert d["parents"] == list(conv.parents) and d["center"] == conv.center
        assert [tuple(e) for e in d["edges"]] == list(conv.edges)
    assert by_name["openpose_25"]["unit"] == "px" and by_name["openpose_25"]["dims"] == 2


def test_cli_table_has_one_row_per_convention(capsys):
    assert cli_main(["conventions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "joints", "unit", "dims", "center"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(REGISTRY)
    assert rows["smplx_42"][1:4] == ["42", "mm", "3D"]


def test_coco_17_graph_is_the_pyskl_coco_layout():
    # pyskl graph.py, layout "coco": inward (child, parent) pairs, center 0 (nose)
    pyskl_inward = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5),
                    (10, 8), (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)]
    coco = get_convention("coco_17")
    assert sorted(coco.edges) == sorted(pyskl_inward) and coco.center == 0
    assert sorted(coco.bones) == sorted(pyskl_inward)
