import json

import numpy as np
import pytest
import torch

from w2svd.eval import probe


def test_probe_learns_motion_from_a_latent_pattern_and_confusion_counts_it():
    # Synthetic latents whose motion kind is written into one channel's time pattern, under noise.
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, len(probe.MOTION_KINDS), (400,), generator=gen)
    latents = torch.randn(400, 4, 3, 8, 8, generator=gen)
    latents[:, 0, :, 2:6, 2:6] += 2.0 * (labels[:, None, None, None].float() - 2)
    fitted = probe.train_probe(latents[:300], labels[:300], epochs=5)
    with torch.no_grad():
        pred = fitted(latents[300:]).argmax(1).numpy()
    cm = probe.confusion(labels[300:].numpy(), pred)
    assert cm.sum() == 100 and probe.ProbeRow.accuracy(cm) > 0.9
    shuffled = probe.train_probe(latents[:300], labels[torch.randperm(300, generator=gen)], epochs=5)
    with torch.no_grad():
        chance = (shuffled(latents[300:]).argmax(1) == labels[300:]).float().mean()
    assert chance < 0.5  # nothing to learn from shuffled labels


def test_train_probe_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="need as many labels as latents"):
        probe.train_probe(torch.zeros(3, 4, 3, 8, 8), torch.zeros(2, dtype=torch.long))


def test_probe_cli_runs_on_the_embedded_base(tmp_path, capsys):
    out = tmp_path / "probe.json"
    md = tmp_path / "probe.md"
    args = ["--n", "8", "--n-train", "16", "--epochs", "1", "--steps", "2", "--json", str(out), "--out-md", str(md)]
    assert probe.main(args) == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["real clips", "base-2"]
    for r in rows:
        assert np.array(r["latent_confusion"]).sum() == 8 and np.array(r["pixel_confusion"]).sum() == 8
        assert 0 <= r["motion_latent_probe"] <= 1
    assert "| base-2 |" in capsys.readouterr().out
    text = md.read_text()
    assert "python -m w2svd.eval.probe --n 8 --n-train 16" in text and "| base-2 |" in text and "base-2, pixels" in text


def test_probe_cli_rejects_bad_counts():
    with pytest.raises(SystemExit):
        probe.main(["--n", "0"])
    with pytest.raises(SystemExit):
        probe.main(["--cfg-scale", "0.5"])


def test_probe_samples_with_the_cfg_scale_and_labels_it(tmp_path, monkeypatch):
    from w2svd.pipeline import VideoGenerator

    nfe = []
    baseline = VideoGenerator.baseline

    def spy(self, *a, **kw):
        result = baseline(self, *a, **kw)
        nfe.append(result.nfe)
        return result

    monkeypatch.setattr(VideoGenerator, "baseline", spy)
    out = tmp_path / "probe.json"
    args = ["--n", "4", "--n-train", "8", "--epochs", "1", "--steps", "1", "--cfg-scale", "2", "--json", str(out)]
    assert probe.main(args) == 0
    assert [r["name"] for r in json.loads(out.read_text())] == ["real clips", "base-1 cfg 2"]
    assert nfe == [2]  # one guided step: two model calls
