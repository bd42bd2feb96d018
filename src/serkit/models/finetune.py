"""Encoder fine-tuning regimes for a model with the encoder in the loop (``features.source: waveform``).

``encoder.finetune`` chooses what of the encoder trains with the head. Short forms: ``false`` / ``"frozen"``
(nothing), ``true`` / ``"full"`` (every weight), ``"top:K"`` (the top K Transformer blocks and the norm after them),
``"lora"`` (low-rank adapters with the defaults below). The mapping form sets everything::

    encoder:
      finetune:
        mode: lora                 # frozen | full | top | lora
        top_k: 2                   # mode top: how many top blocks train
        lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}
        layer_decay: 0.9           # learning rate of block i (counted from the top, 1 = top) x decay**i
        warmup_epochs: 1           # the first N epochs train the head alone (encoder frozen, in eval mode)
        gradient_checkpointing: false

:func:`resolve_finetune` turns any of these into :class:`FinetuneOptions` (defaults filled in, every value checked:
a mistake is a one-line :class:`~serkit.errors.ConfigError` naming the key). LoRA uses the ``peft`` library
(``pip install 'serkit[finetune]'``); its adapters go on the named linear projections inside the Transformer blocks
only (default: attention q/k/v/out and both feed-forward projections; WavLM: the feed-forward only, its
attention reads the projection weights as tensors), and
:func:`merge_adapters` folds them into the weights before a model folder is written, so prediction and ONNX export
see a plain encoder.
"""

from __future__ import annotations

import dataclasses
import re
from numbers import Real

import torch
from torch import nn

from serkit.errors import ConfigError

MODES = ("frozen", "full", "top", "lora")
#: Linear projections inside a block that LoRA adapts by default: Whisper (q/k/v/out_proj, fc1, fc2) and the SSL
#: families (attention q/k/v/out_proj, feed_forward.intermediate_dense / output_dense).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "intermediate_dense", "output_dense")
LORA_DEFAULTS = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": list(LORA_TARGETS)}
KEYS = ("mode", "top_k", "lora", "layer_decay", "warmup_epochs", "gradient_checkpointing")
WHERE = "encoder.finetune"


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    """What of the encoder trains and how (see the module docstring)."""

    mode: str = "frozen"
    top_k: int = 0
    lora: dict = dataclasses.field(default_factory=lambda: dict(LORA_DEFAULTS))
    layer_decay: float = 1.0
    warmup_epochs: int = 0
    gradient_checkpointing: bool = False

    @property
    def trains_encoder(self) -> bool:
        return self.mode != "frozen"


def _int(value, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"config: {WHERE}.{key} must be an integer >= {low}, got {value!r}")
    return value


def _float(value, key: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"config: {WHERE}.{key} must be a number in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return value


def _lora(value) -> dict:
    if value is None:
        return dict(LORA_DEFAULTS)
    if not isinstance(value, dict):
        raise ConfigError(f"config: {WHERE}.lora must be a mapping (r, alpha, dropout, target_modules), got {value!r}")
    extra = set(value) - set(LORA_DEFAULTS)
    if extra:
        raise ConfigError(f"config: unknown key(s) {sorted(f'{WHERE}.lora.{k}' for k in extra)}; "
                          f"known: {sorted(LORA_DEFAULTS)}")
    out = {**LORA_DEFAULTS, **value}
    out["r"] = _int(out["r"], "lora.r", 1)
    out["alpha"] = _float(out["alpha"], "lora.alpha", 0.0, float("inf"), low_open=True)
    out["dropout"] = _float(out["dropout"], "lora.dropout", 0.0, 1.0, high_open=True)
    targets = out["target_modules"]
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"config: {WHERE}.lora.target_modules must be a non-empty list of module names "
                          f"(e.g. {list(LORA_TARGETS[:3])}), got {out['target_modules']!r}")
    out["target_modules"] = list(targets)
    return out


def resolve_finetune(value) -> FinetuneOptions:
    """``encoder.finetune`` (any accepted form, or None) -> :class:`FinetuneOptions` with defaults filled in;
    a :class:`ConfigError` naming the key for anything else."""
    if value is None or value is False or value in ("none", "frozen"):
        return FinetuneOptions()
    if value is True or value == "full":
        return FinetuneOptions(mode="full")
    if value == "lora":
        return FinetuneOptions(mode="lora")
    if isinstance(value, str) and value.startswith("top:"):
        k = value.split(":", 1)[1]
        if not k.isdigit() or int(k) < 1:
            raise ConfigError(f"config: {WHERE}={value!r}: expected top:K with K >= 1 blocks")
        return FinetuneOptions(mode="top", top_k=int(k))
    if not isinstance(value, dict):
        raise ConfigError(f"config: {WHERE} must be false, true, 'full', 'top:K', 'lora' or a mapping with keys "
                          f"{list(KEYS)}, got {value!r}")
    extra = set(value) - set(KEYS)
    if extra:
        raise ConfigError(f"config: unknown key(s) {sorted(f'{WHERE}.{k}' for k in extra)}; known: {list(KEYS)}")
    mode = value.get("mode", FinetuneOptions.mode)
    mode = {False: "frozen", None: "frozen", "none": "frozen", True: "full"}.get(mode, mode)
    if mode not in MODES:
        raise ConfigError(f"config: {WHERE}.mode={value.get('mode')!r} is not one of {MODES}")
    top_k = value.get("top_k")
    if mode == "top":
        if top_k is None:
            raise ConfigError(f"config: {WHERE}.top_k: mode top needs the number of top blocks that train")
        top_k = _int(top_k, "top_k", 1)
    elif top_k is not None:
        _int(top_k, "top_k", 1)
    gc = value.get("gradient_checkpointing", FinetuneOptions.gradient_checkpointing)
    if not isinstance(gc, bool):
        raise ConfigError(f"config: {WHERE}.gradient_checkpointing must be true or false, got {gc!r}")
    return FinetuneOptions(
        mode=mode,
        top_k=top_k if mode == "top" else 0,
        lora=_lora(value.get("lora")),
        layer_decay=_float(value.get("layer_decay", FinetuneOptions.layer_decay), "layer_decay", 0.0, 1.0,
                           low_open=True),
        warmup_epochs=_int(value.get("warmup_epochs", FinetuneOptions.warmup_epochs), "warmup_epochs", 0),
        gradient_checkpointing=gc,
    )


def check_config(cfg: dict) -> None:
    """Validate ``encoder.finetune`` of a whole config: its form, and that a trained encoder runs in the loop
    (``features.source: waveform``). The config keeps the value as written."""
    enc = cfg.get("encoder")
    if not isinstance(enc, dict) or "finetune" not in enc:
        return
    opts = resolve_finetune(enc["finetune"])
    if opts.trains_encoder and cfg["features"]["source"] != "waveform":
        raise ConfigError(f"config: {WHERE} mode {opts.mode!r} trains the encoder inside the model: set "
                          f"features.source: waveform")
    if opts.mode == "lora":
        require_peft()


def require_peft():
    try:
        import peft
    except ImportError:
        raise ConfigError(f"config: {WHERE} mode 'lora' needs the peft library: pip install 'serkit[finetune]'") \
            from None
    return peft


# -- applying a regime to an encoder ---------------------------------------------------------------------------------

def _tensor_read_projections(encoder: nn.Module) -> set[str]:
    """Names of linear layers whose weights the encoder reads as tensors instead of calling the module (an adapter
    there would never run): WavLM's attention projections (``torch.nn.functional.multi_head_attention_forward``)."""
    out = set()
    for name, mod in encoder.named_modules():
        if type(mod).__name__ == "WavLMAttention":
            out |= {f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    return out


def lora_targets(encoder: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the linear layers inside ``encoder``'s Transformer blocks (``...layers.<i>....<target>``)
    whose name ends in one of ``targets``, minus those the encoder reads as tensors (WavLM's attention: there only
    the feed-forward projections can be adapted). A :class:`ConfigError` when none is left."""
    names = "|".join(re.escape(t) for t in targets)
    pattern = rf"(.*\.)?layers\.\d+\.(.*\.)?({names})"
    matched = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]
    skipped = _tensor_read_projections(encoder)
    usable = [n for n in matched if n not in skipped]
    if not usable:
        why = (" (this encoder reads its attention projections as tensors, where an adapter would never run; "
               "adapt the feed-forward: intermediate_dense, output_dense)") if matched else ""
        raise ConfigError(f"config: {WHERE}.lora.target_modules={targets} matches no adaptable linear layer inside "
                          f"the encoder's blocks{why}; defaults: {list(LORA_TARGETS)}")
    return usable


def add_lora(encoder: nn.Module, lora: dict) -> list[str]:
    """Inject LoRA adapters into ``encoder``'s blocks in place (peft; the layers of :func:`lora_targets`); only the
    adapters stay trainable. Returns the adapted layers' names."""
    peft = require_peft()
    targets = lora_targets(encoder, lora["target_modules"])
    config = peft.LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                             target_modules=targets, bias="none")
    peft.inject_adapter_in_model(config, encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad = "lora_" in name
    encoder.has_adapters = True
    return targets


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter inside ``model`` into its base weights and put the plain ``nn.Linear`` back (in
    place); the state dict then has the names and shapes of an encoder without adapters. Returns ``model``."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return model  # no peft: no adapters anywhere
    adapted = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, LoraLayer)]
    for name, mod in adapted:
        with torch.no_grad():
            mod.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod.get_base_layer())
    for mod in model.modules():
        if getattr(mod, "has_adapters", False):
            mod.has_adapters = False
    return model


def enable_gradient_checkpointing(encoder: nn.Module) -> bool:
    """Recompute each block's activations in the backward pass (``transformers``' checkpointing of every
    ``GradientCheckpointingLayer``, non-reentrant so a frozen front end still lets gradients reach the blocks).
    Returns whether a ``transformers`` model was found to enable it on."""
    from transformers import PreTrainedModel

    for mod in encoder.modules():
        if isinstance(mod, PreTrainedModel) and mod.supports_gradient_checkpointing:
            kw = {"use_reentrant": False}
            if hasattr(mod, "activation_checkpointing_enable"):
                mod.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                mod.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
            return True
    return False


def layer_scales(encoder: nn.Module, decay: float) -> dict[int, float]:
    """Learning-rate factor per encoder parameter (by ``id``) for layer-wise decay: the top block (and the norm
    after it) ``decay``, the block below ``decay**2``, ..., the bottom block ``decay**n`` and everything under the
    blocks (front end, feature projection, positional and mask embeddings) ``decay**(n + 1)``."""
    from serkit.models.staged_encoder import _final_norm_names, encoder_blocks

    blocks = encoder_blocks(encoder)
    n = len(blocks)
    scales = {id(p): decay ** (n + 1) for p in encoder.parameters()}
    final = _final_norm_names(encoder)
    for name, p in encoder.named_parameters():
        if name in final:
            scales[id(p)] = decay
    for i, block in enumerate(blocks):
        for p in block.parameters():
            scales[id(p)] = decay ** (n - i)
    return scales
