"""tools/residual_probe.py: the latent-change figure and the argument checks (the probe itself runs for minutes)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from residual_probe import latent_change, main  # noqa: E402


def test_latent_change_is_zero_for_a_still_clip_and_sees_where_it_moves():
    still = torch.randn(2, 4, 1, 8, 8).expand(2, 4, 3, 8, 8)
    assert torch.equal(latent_change(still), torch.zeros(2, 8, 8))
    moving = still.clone()
    moving[:, :, 1, 5, :] += 1.0  # one row changes in the middle frame: up then down again
    change = latent_change(moving)
    assert change.shape == (2, 8, 8)
    assert torch.allclose(change[:, 5], torch.ones(2, 8)) and change[:, :5].abs().max() == 0


@pytest.mark.parametrize("args", [["--n", "0"], ["--n", "257"], ["--levels", "0"], ["--levels", "0.2", "1.5"]])
def test_bad_arguments_are_refused_before_any_model_loads(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err
