"""Learning test (core only): short MS-CLR pretraining beats a random-init encoder.

Bar: the frozen encoder's linear-probe top-1 on the synthetic benchmark's xsub test
split must be at least 10 points above the same probe on the randomly initialised
encoder (issue 2). Both numbers are printed (pytest -s or -rA shows them).
"""

from msclr_core.demo import DemoSettings, run_demo


def test_msclr_pretraining_beats_random_init_by_10_points():
    s = DemoSettings(clips=900)
    s.pretrain.optim.epochs = 4
    out = run_demo(s)
    print(f"\nlinear probe top-1: random init {out['random_init_top1']:.3f}, "
          f"MS-CLR pretrained {out['pretrained_top1']:.3f}, gain {out['gain'] * 100:+.1f} points")  # fmt: skip
    assert out["gain"] >= 0.10, out
