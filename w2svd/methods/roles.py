"""The three roles of distribution-matching distillation (generator, fake score, real score) on a backbone.

Two realisations behind one small interface, chosen by ``method.roles``:

- ``LoraRoles`` (W2SVD, default): one frozen backbone holds a generator LoRA and a fake-score LoRA;
  the real score is the fake-score LoRA at scale ``alpha_weak`` (0: the frozen backbone).
- ``CopiesRoles`` (DMD2 / FastVideo): full-parameter generator and fake-score copies of the transformer
  (``copy.deepcopy``, every parameter trained) beside the frozen original as the real score.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from peft import LoraConfig
from safetensors.torch import save_file

from w2svd.backbones import Backbone, Cond
from w2svd.generator_meta import GeneratorMeta
from w2svd.lora import lora_config, save_lora, trainable_lora_params
from w2svd.pipeline import GENERATOR_META
from w2svd.training import sharding

GENERATOR, FAKE, REAL = "generator", "fake_score", "real_score"


class LoraAdapters:
    """Named LoRA adapters on one frozen transformer; switching between them never touches ``requires_grad``.

    peft's ``set_adapters`` flips ``requires_grad`` of inactive adapters, and autograd reads the flag at backward
    time: a loss that switched to another adapter after its forward would silently give its own no gradient. So
    ``use`` puts every flag back as it was, and only the training loop decides what is trained (``Method.arm``).
    The adapters are kept in fp32 whatever the frozen weights' dtype (peft creates them in the base's dtype).
    """

    def __init__(self, transformer, configs: dict[str, LoraConfig]) -> None:
        self.transformer = transformer
        transformer.requires_grad_(False)
        for name, config in configs.items():
            transformer.add_adapter(config, adapter_name=name)
        self.params = {name: trainable_lora_params(transformer, name) for name in configs}
        for p in (p for params in self.params.values() for p in params):
            p.data = p.data.float()  # as diffusers' cast_training_params; a no-op on an fp32 backbone
            p.requires_grad_(False)  # nothing learns until the loop arms a phase (Method.arm)

    def use(self, adapter: str, scale: float = 1.0) -> None:
        """Make ``adapter`` the only active one, at ``scale`` (0 reproduces the backbone exactly)."""
        flags = [(p, p.requires_grad) for params in self.params.values() for p in params]
        self.transformer.set_adapters([adapter], [scale])
        for p, flag in flags:
            p.requires_grad_(flag)

    @contextlib.contextmanager
    def active(self, adapter: str, scale: float = 1.0) -> Iterator[None]:
        """``with adapters.active(name, scale):`` the transformer computes that adapter's velocity."""
        self.use(adapter, scale)
        yield

    def named(self, adapter: str) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.transformer.named_parameters() if f".{adapter}." in n]


class Roles:
    """Generator, fake score and real score as velocity functions, plus what is trained and exported.

    ``velocity_fn(role, cond)`` is the role's v(x_s, s); each call runs inside ``role_context(role)``, which
    switches adapters (LoRA roles) or transformers (copies) and never what is trained.
    """

    params: dict[str, list[torch.nn.Parameter]]  # GENERATOR and FAKE -> trained parameters

    def role_context(self, role: str, scale: float | None = None) -> contextlib.AbstractContextManager:
        """``with roles.role_context(FAKE):`` the backbone computes ``role``; ``scale``: LoRA roles only."""
        raise NotImplementedError

    def backbone_for(self, role: str) -> Backbone:
        """The backbone (transformer, text encoders) that computes ``role``'s velocity."""
        raise NotImplementedError

    def activate(self, role: str) -> None:
        """Leave ``role`` the active network: backward recomputes checkpointed blocks with whatever is active."""

    def velocity_fn(self, role: str, cond: Cond, guidance: float = 1.0, scale: float | None = None):
        """``role``'s v(x_s, s) for conditioning ``cond``; ``scale`` overrides the LoRA scale."""
        backbone = self.backbone_for(role)

        def v(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            with self.role_context(role, scale):
                return backbone.velocity(x, s, cond, guidance)

        return v

    def transformer(self, role: str) -> torch.nn.Module:
        """The transformer module that computes ``role``'s velocity."""
        raise NotImplementedError

    def named(self, role: str) -> list[tuple[str, torch.nn.Parameter]]:
        """The trained tensors of GENERATOR or FAKE, with names unique across both roles."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        raise NotImplementedError

    def rebind_parameters(self) -> None:
        """Re-collect ``params`` after sharding replaced the modules' parameters."""
        raise NotImplementedError

    def export(self, out_dir: Path, metadata: GeneratorMeta, pipeline_cls, write: bool = True) -> None:
        """Write the generator's inference artifact and ``metadata`` into ``out_dir``.

        Sharded modules: every process calls it (the shards are gathered) and only ``write`` ones write.
        """
        raise NotImplementedError


class LoraRoles(Roles):
    """Generator and fake-score LoRAs on one frozen backbone; real score = backbone + alpha_weak * fake LoRA."""

    def __init__(self, backbone: Backbone, cfg) -> None:
        self.backbone, self.cfg = backbone, cfg  # cfg.alpha_weak and cfg.guidance are read at call time
        regex = backbone.lora_target_regex
        self.adapters = LoraAdapters(
            backbone.transformer,
            {
                GENERATOR: lora_config(cfg.generator_rank, cfg.generator_lora_alpha, regex),
                FAKE: lora_config(cfg.fake_rank, cfg.fake_lora_alpha, regex),
            },
        )
        self.params = self.adapters.params

    def role_context(self, role, scale=None):
        """The real score is the fake-score LoRA at ``alpha_weak`` (read at call time); the others at scale 1."""
        if scale is None:
            scale = self.cfg.alpha_weak if role == REAL else 1.0
        return self.adapters.active(FAKE if role == REAL else role, scale)

    def backbone_for(self, role: str) -> Backbone:
        return self.backbone

    def activate(self, role: str) -> None:
        self.adapters.use(role)

    def transformer(self, role: str) -> torch.nn.Module:
        return self.backbone.transformer

    def named(self, role: str):
        return self.adapters.named(role)

    def train(self, mode: bool = True) -> None:
        self.backbone.transformer.train(mode)

    def rebind_parameters(self) -> None:
        self.adapters.params = {name: trainable_lora_params(self.transformer(GENERATOR), name) for name in self.params}
        self.params = self.adapters.params

    def export(self, out_dir, metadata, pipeline_cls, write=True) -> None:
        state = sharding.gather({n: p.detach() for n, p in self.adapters.named(GENERATOR)})
        if write:
            save_lora(self.backbone.transformer, GENERATOR, out_dir, metadata, pipeline_cls, state_dict=state)


class CopiesRoles(Roles):
    """Full-parameter generator and fake-score copies of the transformer; the original is the frozen teacher.

    The trained copies are fp32 whatever the teacher's dtype (``method.dtype``).
    """

    def __init__(self, backbone: Backbone, cfg) -> None:
        self.cfg = cfg  # cfg.guidance is read at call time
        teacher = backbone.transformer
        teacher.requires_grad_(False)
        self.modules = {GENERATOR: copy.deepcopy(teacher).float(), FAKE: copy.deepcopy(teacher).float()}
        for module in self.modules.values():
            module.requires_grad_(True)
        self.backbones = {REAL: backbone}
        for role, module in self.modules.items():
            self.backbones[role] = copy.copy(backbone)  # same VAE and text encoders, its own transformer
            self.backbones[role].transformer = module
        self.params = {role: list(module.parameters()) for role, module in self.modules.items()}

    def role_context(self, role, scale=None):
        if scale is not None and scale != 1.0:
            raise ValueError(f"scale={scale}: full-copy roles have no adapter to scale; use method.roles=lora")
        return contextlib.nullcontext()  # each role has its own transformer (``backbone_for``)

    def backbone_for(self, role: str) -> Backbone:
        return self.backbones[role]

    def transformer(self, role: str) -> torch.nn.Module:
        return self.backbones[role].transformer

    def named(self, role: str):
        return [(f"{role}.{n}", p) for n, p in self.modules[role].named_parameters()]

    def train(self, mode: bool = True) -> None:
        for backbone in self.backbones.values():
            backbone.transformer.train(mode)

    def rebind_parameters(self) -> None:
        self.params = {role: list(module.parameters()) for role, module in self.modules.items()}

    def export(self, out_dir, metadata, pipeline_cls, write=True) -> None:
        """A diffusers transformer folder ``<out_dir>/transformer`` with the metadata beside its config."""
        module = self.modules[GENERATOR]
        state = sharding.gather(module.state_dict())  # full tensors, whether or not the module is sharded
        if not write:
            return
        folder = Path(out_dir) / "transformer"
        folder.mkdir(parents=True, exist_ok=True)
        module.save_config(folder)
        save_file({k: v.detach().contiguous() for k, v in state.items()}, folder / SAFETENSORS_WEIGHTS_NAME)
        metadata.write_json(folder / GENERATOR_META)


ROLES: dict[str, type[Roles]] = {"lora": LoraRoles, "copies": CopiesRoles}
