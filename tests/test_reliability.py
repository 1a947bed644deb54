"""Crash safety: a run SIGKILLed at a random moment and re-run ends bitwise identical to an uninterrupted one."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "training" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigkill_then_rerun_gives_the_same_lora(tmp_path, capsys):
    script = load_script()
    rc = script.main(["--runs", "1", "--kills", "2", "--max-delay", "8", "--out", str(tmp_path), "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "1/1 runs survived" in out
