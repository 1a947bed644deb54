"""The contract between training and inference: what a distilled generator needs to sample, typed and checked.

Written by the training methods (``Method.generator_meta``) into the LoRA's safetensors header (key ``w2svd``) and
``w2svd_lora.json`` beside it, or ``w2svd_generator.json`` beside a full distilled transformer; read back by
``VideoGenerator``, the model cards and the Hub tools. On disk it stays one flat JSON object: the fields below plus
the method's own settings (``training``: alpha_weak, lambda_gt, ...), which inference never reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from w2svd.lora import LoraMismatchError, read_metadata


class GeneratorMetaError(LoraMismatchError):
    """Metadata a sampler cannot use; the message names the file and the bad value."""


@dataclasses.dataclass
class GeneratorMeta:
    sigmas_by_steps: dict[str, list[float]]  # step count -> the noise levels it samples, from 1.0 down to 0.0
    default_steps: int
    guidance_scale: float = 1.0  # embedded guidance (guidance-distilled bases)
    renoise: bool = True  # re-noise the x0 prediction between steps (stochastic_sampling=True in diffusers)
    base_model: str = ""  # the base it was distilled from ('embedded', a folder, a Hub id); '' if unknown
    pipeline: str = "HunyuanVideoPipeline"  # the base's diffusers pipeline class
    method: str = "w2svd"
    real_cfg_scale: float = 1.0  # the teacher's classifier-free guidance the generator learned
    training_steps: int = 0  # generator updates
    training: dict[str, Any] = dataclasses.field(default_factory=dict)  # the method's own settings

    def __post_init__(self) -> None:
        self.sigmas_by_steps = {str(k): v for k, v in self.sigmas_by_steps.items()}

    @property
    def steps(self) -> list[int]:
        return sorted(int(k) for k in self.sigmas_by_steps)

    def check(self, where: str) -> GeneratorMeta:
        """Self, or GeneratorMetaError: every sigma list falls strictly from 1 to a final 0, default in the table."""
        table = self.sigmas_by_steps
        if not isinstance(table, dict) or not table:
            raise GeneratorMetaError(f"{where}: sigmas_by_steps must be a non-empty mapping of step counts to lists")
        for steps, sigmas in table.items():
            ok = steps.isdigit() and int(steps) >= 1 and isinstance(sigmas, list) and len(sigmas) == int(steps) + 1
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sigmas)
            ok = ok and all(math.isfinite(v) for v in sigmas) and abs(sigmas[0] - 1.0) < 1e-6 and sigmas[-1] == 0
            if not (ok and all(a > b for a, b in zip(sigmas, sigmas[1:]))):
                raise GeneratorMetaError(
                    f"{where}: sigmas_by_steps[{steps!r}]={sigmas!r} must be {steps} + 1 finite numbers falling "
                    "strictly from 1.0 to 0.0 (the sampler's noise levels); re-export the generator"
                )
        if str(self.default_steps) not in table:
            raise GeneratorMetaError(f"{where}: default_steps={self.default_steps!r} is not one of {sorted(table)}")
        return self

    # ---- the flat JSON object on disk ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "training"}
        return {**self.training, **fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> GeneratorMeta:
        """The typed, checked metadata of ``data`` (a file's JSON); keys it does not know are ``training``."""
        if not isinstance(data, dict) or "sigmas_by_steps" not in data:
            raise GeneratorMetaError(f"{where} has no w2svd metadata (sigmas_by_steps); was it exported by w2svd?")
        known = {f.name for f in dataclasses.fields(cls)} - {"training"}
        typed = {k: v for k, v in data.items() if k in known}
        typed.setdefault("default_steps", min((int(k) for k in data["sigmas_by_steps"] or {}), default=0))
        extra = {k: v for k, v in data.items() if k not in known}
        if not isinstance(typed["sigmas_by_steps"], dict):
            raise GeneratorMetaError(f"{where}: sigmas_by_steps must be a non-empty mapping of step counts to lists")
        return cls(**typed, training=extra).check(where)

    @classmethod
    def read_lora(cls, path: str | Path) -> GeneratorMeta:
        """The metadata in a LoRA file's safetensors header (or its folder's file)."""
        return cls.from_dict(read_metadata(path), str(path))

    @classmethod
    def read_json(cls, path: str | Path) -> GeneratorMeta:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise GeneratorMetaError(f"{path}: unreadable generator metadata ({e}); re-export the generator") from e
        return cls.from_dict(data, str(path))

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
