"""Joint, motion and bone streams."""

import pytest
import torch

from msclr_core.conventions import REGISTRY, get_convention
from msclr_core.errors import ConfigError, DataError
from msclr_core.streams import to_stream


def sample(conv, n=2, t=6, m=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    conv = get_convention(conv)
    return torch.randn(n, conv.dims, t, conv.num_joints, m, generator=gen)


def test_joint_is_identity():
    x = sample("ntu-rgb+d")
    assert torch.equal(to_stream(x, "ntu-rgb+d", "joint"), x)


def test_motion_is_the_forward_difference_with_a_zero_last_frame():
    x = sample("smplx_42")
    m = to_stream(x, "smplx_42", "motion")
    assert m.shape == x.shape
    torch.testing.assert_close(m[:, :, 2], x[:, :, 3] - x[:, :, 2])
    assert (m[:, :, -1] == 0).all() and (m[:, :, :-1] != 0).all()
    torch.testing.assert_close(x[:, :, :1] + m.cumsum(2)[:, :, :-1], x[:, :, 1:])


def test_ntu_bones_follow_the_official_pairs():
    x = sample("ntu-rgb+d")
    b = to_stream(x, get_convention("ntu-rgb+d"), "bone")
    torch.testing.assert_close(b[:, :, :, 0], x[:, :, :, 0] - x[:, :, :, 1])  # (1,2) 1-based
    torch.testing.assert_close(b[:, :, :, 21], x[:, :, :, 21] - x[:, :, :, 22])  # tip -> thumb
    assert (b[:, :, :, 20] == 0).all()  # spine-shoulder: (21,21), bone 0


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bones_reconstruct_the_joints_from_the_roots(name):
    """Summing bones up each convention's own parent chain gives back the joint positions."""
    conv = get_convention(name)
    x = sample(name)
    b = to_stream(x, name, "bone")
    assert b.shape == x.shape
    rebuilt = torch.zeros_like(x)
    for j in range(conv.num_joints):
        k, total = j, torch.zeros_like(x[:, :, :, 0])
        while conv.parents[k] != -1:
            total = total + b[:, :, :, k]
            k = conv.parents[k]
        assert (b[:, :, :, k] == 0).all()  # root bone is 0
        rebuilt[:, :, :, j] = x[:, :, :, k] + total
    torch.testing.assert_close(rebuilt, x)


def test_bones_use_the_conventions_own_parents():
    # smplx_42: its isolated eye joints are roots (0), and lsho hangs on lcla, not on
    # whatever NTU index 16 would imply
    x = sample("smplx_42")
    b = to_stream(x, "smplx_42", "bone")
    assert (b[:, :, :, [9, 23, 24]] == 0).all()
    torch.testing.assert_close(b[:, :, :, 16], x[:, :, :, 16] - x[:, :, :, 13])
    # berkeley_mhad_43: every non-root joint gets a bone (the official unordered pairs
    # overwrote some bones and left joints without one)
    mhad = get_convention("berkeley_mhad_43")
    xm = sample(mhad)
    bm = to_stream(xm, mhad, "bone")
    assert (bm != 0).any(dim=(0, 1, 2, 4)).sum() == 43 - 3


def test_2d_convention_works_with_two_channels():
    x = sample("openpose_25")
    assert x.shape[1] == 2
    assert to_stream(x, "openpose_25", "bone").shape == x.shape


def test_unknown_stream_is_a_config_error():
    with pytest.raises(ConfigError, match="'velocity'"):
        to_stream(sample("ntu-rgb+d"), "ntu-rgb+d", "velocity")


def test_wrong_joint_count_is_a_data_error():
    with pytest.raises(DataError, match="smpl_24.*25"):
        to_stream(sample("ntu-rgb+d"), "smpl_24", "bone")
