"""Motion by face region: real clips pass, a still or wrongly placed motion fails, bad input is named."""

import numpy as np
import pytest

from w2svd.data import heldout_examples
from w2svd.data.dataset import render_examples
from w2svd.eval import motion_regions as mr


@pytest.fixture(scope="module")
def real():
    examples = heldout_examples(40)
    return render_examples(examples), [e.portrait.label("motion") for e in examples]


def test_real_clips_have_their_motion_in_the_right_region(real):
    clips, motions = real
    assert set(motions) == set(mr.REGION)  # every kind is exercised
    f = mr.region_figures(clips, motions)
    assert f["right"].all()


def test_still_clips_fail_and_motion_in_the_wrong_band_fails(real):
    clips, motions = real
    still = np.repeat(clips[:, :1], clips.shape[1], axis=1)
    assert not mr.region_figures(still, motions)["visible"].any()
    # a talking clip labelled blinking: its moving pixels are in the mouth band, not the eye band
    talking = [i for i, m in enumerate(motions) if m == "talking"]
    f = mr.region_figures(clips[talking], ["blinking"] * len(talking))
    assert not f["right"].any()
    # flicker everywhere on top of real motion: visible, but most moving pixels are outside the band
    rng = np.random.default_rng(0)
    noisy = np.clip(clips[talking].astype(int) + rng.integers(-40, 41, clips[talking].shape), 0, 255).astype(np.uint8)
    f = mr.region_figures(noisy, ["talking"] * len(talking))
    assert f["visible"].all() and not f["right"].any()


def test_summary_table_and_errors(real):
    clips, motions = real
    row = mr.summarise("real clips", clips, motions)
    assert row.right == 1.0 and row.per_motion["talking"]["share"] > 0.9
    table = mr.format_table([row])
    assert "| real clips | **100.0%** |" in table and "Median moving pixels" in table
    with pytest.raises(ValueError, match="got 40 clips but 2 motion labels"):
        mr.region_figures(clips, motions[:2])
    with pytest.raises(ValueError, match=r"unknown motion kinds \['dancing'\]"):
        mr.region_figures(clips[:1], ["dancing"])
    with pytest.raises(ValueError, match=r"clips must be \(N, F>=2, H, W, 3\)"):
        mr.moving_pixels(clips[:, :1])


def test_cli_rows_on_the_embedded_base(capsys, tmp_path):
    md = tmp_path / "regions.md"
    assert mr.main(["--n", "5", "--lora", "none", "--out-md", str(md)]) == 0
    out = capsys.readouterr().out
    assert "| real clips |" in out and "| base-28 (CFG 2, default) |" in out and "| euler-4, no CFG |" in out
    assert "python -m w2svd.eval.motion_regions --n 5" in md.read_text()
    with pytest.raises(SystemExit):
        mr.main(["--n", "0"])


def test_lora_only_skips_the_base_rows(capsys):
    assert mr.main(["--n", "5", "--lora-only"]) == 0
    out = capsys.readouterr().out
    assert "| real clips |" in out and "| w2svd-4 |" in out
    assert "base-28" not in out and "euler-4" not in out
    with pytest.raises(SystemExit):
        mr.main(["--n", "5", "--lora", "none", "--lora-only"])
    assert "--lora-only needs a LoRA" in capsys.readouterr().err
