"""LoRA key styles: every UNet style diffusers reads, in; kohya / A1111 / ComfyUI files, out.

An :class:`~concept_erase.adapter.UnlearningAdapter` holds PEFT keys only, with ΔW = B·A exactly.
A file in any UNet style that diffusers' ``load_lora_weights`` reads is converted on load:

============  =====================================================================================
style         keys
============  =====================================================================================
``peft``      ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (diffusers with PEFT; our files)
``diffusers`` diffusers' training scripts before PEFT: ``unet.<module>.lora.down.weight`` /
              ``.lora.up.weight``, and the attention-processor form
              ``unet.<block>.attn2.processor.to_k_lora.down.weight`` / ``...to_k_lora.up.weight``
``kohya``     kohya sd-scripts, A1111, ComfyUI: ``lora_unet_<module, dots as _>.lora_down.weight`` /
              ``.lora_up.weight`` / ``.alpha``; each layer is scaled by alpha / rank, which is folded
              into ``lora_B`` on load
============  =====================================================================================

Module names are mapped with diffusers' own conversion (``StableDiffusionPipeline.lora_state_dict``,
then ``diffusers.utils.convert_unet_state_dict_to_peft``), so a file adapts here the layers it adapts
in diffusers.

**Text-encoder keys are refused** (``text_encoder.*``, ``lora_te_*``): an unlearning adapter changes
the UNet only, and loading the UNet half of a file that also changes the text encoder would give
other images than the same file gives in every other loader, without a word. The error names the
keys and the way out (``pipe.load_lora_weights`` for the whole file).

**Writing kohya** (:func:`kohya_state_dict`): kohya sd-scripts, A1111 and ComfyUI scale each layer
by ``alpha / lora_down.shape[0]``. diffusers (0.42) turns alphas that differ into a PEFT
``alpha_pattern``, but names an attention layer's alpha after its attention-processor key
(``...attn2.processor.to_k_lora.down.weight.alpha``), which matches no module: such a layer falls
back to the most common alpha. So every layer gets the *same* alpha and ``lora_up`` is multiplied
by ``rank / alpha``:
each of those loaders then applies exactly ``B·A``, whatever mix of ranks the adapter has. The file
carries kohya's ``ss_*`` and Stability AI's ``modelspec.*`` metadata (:func:`kohya_metadata`), which
A1111 and Civitai read. ComfyUI maps ``lora_unet_<module with _>`` keys onto its UNet
(``comfy/lora.py``), so the kohya file is the ComfyUI route too; our PEFT file is not, because
ComfyUI expects attention layers of diffusers-style files as ``attn2.processor.to_k``.
"""

from __future__ import annotations

import collections
import datetime
import math
import re

import torch

from .errors import AdapterFormatError

__all__ = ["key_style", "peft_from_diffusers", "peft_from_kohya", "kohya_name", "kohya_alpha", "kohya_state_dict",
           "kohya_metadata", "base_family"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")
_KOHYA_KEY = re.compile(r"^lora_unet_(?P<module>[^.]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
# diffusers' UNet mapping (`UNET_TO_DIFFUSERS` in diffusers.utils.state_dict_utils): `.lora.down`,
# `.lora.up`, and `.to_{q,k,v,out}_lora.{down,up}` of the attention-processor era
_DIFFUSERS_KEY = re.compile(r"^unet\..+(\.lora|\.to_(q|k|v|out)_lora)\.(down|up)\.weight$")

# cross-attention width of the UNet (``attn2.to_k`` input features) -> kohya's
# ``ss_base_model_version``, the modelspec architecture id and its resolution
_FAMILIES = {768: ("sd_v1", "stable-diffusion-v1", "512x512"),
             1024: ("sd_v2", "stable-diffusion-v2-512", "512x512"),
             2048: ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base", "1024x1024")}


def key_style(keys, where: str) -> str:
    """``"peft"``, ``"diffusers"`` or ``"kohya"``: the LoRA key style of a file's tensor names.

    Raises :class:`AdapterFormatError` for text-encoder keys (see the module docstring for why).

    >>> key_style(["lora_unet_conv_in.lora_down.weight", "lora_unet_conv_in.lora_up.weight"], "x")
    'kohya'
    """
    keys = list(keys)
    text = [k for k in keys if k.startswith(_TEXT_ENCODER_PREFIXES)]
    if text:
        raise AdapterFormatError(
            f"{where}: {len(text)} of its {len(keys)} tensors change the text encoder (e.g. {text[0]!r}). An "
            "unlearning adapter changes the UNet only, and loading the UNet part alone would give other images than "
            "this file gives elsewhere. Load the whole file with `pipe.load_lora_weights(...)`, or save a copy "
            "without its text-encoder keys to use the UNet part.")
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(_DIFFUSERS_KEY.match(k) for k in keys):
        return "diffusers"
    return "peft"


def peft_from_diffusers(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """diffusers training-script keys (``unet.<module>.lora.down.weight``, ``...processor.to_k_lora.up.weight``)
    -> PEFT keys, by diffusers' own mapping."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    out = convert_unet_state_dict_to_peft(dict(tensors))
    if len(out) != len(tensors):
        raise AdapterFormatError(f"{where}: some layers appear twice, under two key styles (e.g. both "
                                 "`.lora.down.weight` and `.lora_A.weight`); keep one of them.")
    return out


def _kohya_scale(alpha: torch.Tensor | None, rank: int, layer: str, where: str) -> float:
    """alpha / rank: the factor kohya sd-scripts, A1111, ComfyUI and diffusers apply to ``lora_up @ lora_down``."""
    if alpha is None:
        return 1.0  # every loader: no alpha, scale 1
    if alpha.numel() != 1 or alpha.dtype not in _FLOAT_DTYPES + (torch.int32, torch.int64):
        raise AdapterFormatError(f"{where}: {layer}.alpha must be one number, but has shape {tuple(alpha.shape)} "
                                 f"and dtype {alpha.dtype}.")
    value = float(alpha.reshape(()))
    if not math.isfinite(value) or value < 0:
        raise AdapterFormatError(f"{where}: {layer}.alpha is {value}; it must be a finite number > 0.")
    if value == 0:
        # kohya sd-scripts reads alpha 0 as alpha = rank (scale 1); diffusers, A1111 and ComfyUI as scale 0
        raise AdapterFormatError(
            f"{where}: {layer}.alpha is 0, which kohya sd-scripts reads as scale 1 but diffusers, A1111 and "
            "ComfyUI read as scale 0, so the file means different things in different loaders. Set the alpha to "
            "the layer's rank (scale 1) or remove it.")
    return value / rank


def _diffusers_reading(name: str) -> str:
    """The module path diffusers' own kohya conversion reads the layer ``lora_unet_<name>`` as."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    t = torch.zeros(1, 1)
    converted, _ = StableDiffusionPipeline.lora_state_dict({f"lora_unet_{name}.lora_down.weight": t,
                                                            f"lora_unet_{name}.lora_up.weight": t})
    key = next(iter(convert_unet_state_dict_to_peft(converted)))
    return key[len("unet."):].rsplit(".lora_", 1)[0]


def peft_from_kohya(tensors: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """kohya keys -> (PEFT tensors with each alpha / rank folded into ``lora_B``, {module: kohya name}).

    Module names are diffusers' reading of the flattened kohya names. Where diffusers reads two layers
    as one module (SDXL's ``add_embedding_linear_1`` and ``_2`` both become ``add.embedding.linear``),
    both keep their kohya name; :meth:`UnlearningAdapter.resolve_kohya_names` matches kohya names
    exactly against a UNet's modules on load.
    """
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KOHYA_KEY.match(key)
        if not m:
            raise AdapterFormatError(f"{where}: unexpected kohya key {key!r} (only UNet LoRA layers, "
                                     "`lora_unet_<layer>.lora_down.weight` / `.lora_up.weight` / `.alpha`, are read).")
        layers.setdefault(m["module"], {})[m["part"]] = t
    readings = {name: _diffusers_reading(name) for name in layers}
    counts = collections.Counter(readings.values())
    peft: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    for name, parts in layers.items():
        layer = f"lora_unet_{name}"
        for part in ("lora_down.weight", "lora_up.weight"):
            t = parts.get(part)
            if t is None:
                raise AdapterFormatError(f"{where}: {layer} has no {part} tensor; the file is incomplete.")
            if t.dtype not in _FLOAT_DTYPES:
                raise AdapterFormatError(f"{where}: {layer}.{part} has dtype {t.dtype}; LoRA factors are float16, "
                                         "bfloat16, float32 or float64.")
            if t.ndim not in (2, 4) or 0 in t.shape:
                raise AdapterFormatError(f"{where}: {layer}.{part} has shape {tuple(t.shape)}; kohya LoRA factors "
                                         "are 2-D (or 4-D for convolutions) and not empty.")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        scale = _kohya_scale(parts.get("alpha"), down.shape[0], layer, where)
        module = readings[name] if counts[readings[name]] == 1 else name
        if module in names:
            raise AdapterFormatError(f"{where}: kohya layers lora_unet_{names[module]} and {layer} name the same "
                                     f"module {module!r}; keep one of them.")
        names[module] = name
        peft[f"unet.{module}.lora_A.weight"] = down
        peft[f"unet.{module}.lora_B.weight"] = up if scale == 1.0 else (up.double() * scale).to(up.dtype)
    return peft, names


def kohya_name(module: str) -> str:
    """The kohya / A1111 / ComfyUI layer name of a diffusers UNet module path.

    >>> kohya_name("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k'
    """
    return "lora_unet_" + module.replace(".", "_")


def kohya_alpha(ranks: dict[str, int]) -> float:
    """The one alpha a kohya export carries: the most common rank (ties: the larger), so most layers
    keep their ``lora_up`` bit for bit."""
    counts = collections.Counter(ranks.values())
    return float(max(counts, key=lambda r: (counts[r], r)))


def kohya_state_dict(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """``{module: (A, B)}`` with ΔW = B·A -> kohya tensors that give exactly ΔW under scale alpha / rank.

    ``lora_up = B · rank / alpha``, so ``alpha / rank · lora_up @ lora_down = B·A`` in kohya sd-scripts,
    A1111, ComfyUI and diffusers alike (one alpha for every layer: see the module docstring).
    """
    if not (math.isfinite(alpha) and alpha > 0):
        raise AdapterFormatError(f"The kohya alpha must be a finite number > 0, but is {alpha}.")
    out, seen = {}, {}
    for module, (a, b) in pairs.items():
        name = kohya_name(module)
        if name in seen:
            raise AdapterFormatError(f"Layers {seen[name]!r} and {module!r} have the same kohya name {name!r}; "
                                     "the kohya format cannot tell them apart. Export with --format peft.")
        seen[name] = module
        rank = a.shape[0]
        out[f"{name}.lora_down.weight"] = a
        out[f"{name}.lora_up.weight"] = b if rank == alpha else (b.double() * (rank / alpha)).to(b.dtype)
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def base_family(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], base_model: str | None) -> tuple[str, str, str | None]:
    """(kohya ``ss_base_model_version``, modelspec architecture id, resolution or None) of the adapted UNet,
    read from its cross-attention width; the shipped world and unknown widths get their own names."""
    widths = {a.shape[1] for m, (a, b) in pairs.items() if m.endswith(("attn2.to_k", "attn2.to_v"))}
    if len(widths) == 1 and (width := widths.pop()) in _FAMILIES:
        return _FAMILIES[width]
    if base_model in ("world", "", None):
        return "concept_erase_world", "concept-erase-world", None
    return "unknown", "unknown", None


def kohya_metadata(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], metadata: dict, *, alpha: float,
                   title: str, output_name: str) -> dict[str, str]:
    """kohya ``ss_*`` and Stability AI ModelSpec (``modelspec.*``) header fields of a kohya export.

    kohya sd-scripts writes ``ss_network_dim`` "Dynamic" when layers have different ranks; we do the
    same, and write the one alpha every layer carries as ``ss_network_alpha``.
    """
    from .version import __version__

    ranks = {a.shape[0] for a, b in pairs.values()}
    version, architecture, resolution = base_family(pairs, metadata.get("base_model"))
    method = str(metadata.get("method", "unknown"))
    concept = metadata.get("concept") if isinstance(metadata.get("concept"), dict) else {}
    about = concept.get("description") or f"erases {title!r}"
    description = (f"Unlearning adapter made by concept-erase {__version__} with {method}: {about} "
                   f"Base model: {metadata.get('base_model', 'unknown')}. Weight 1.0 applies the erasure as trained.")
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
        "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": version,
        "ss_v2": str(version == "sd_v2"),
        "ss_output_name": output_name,
        "ss_sd_model_name": str(metadata.get("base_model", "unknown")),
        "ss_training_comment": description,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": "diffusers",  # layer names are diffusers' module paths
        "modelspec.title": title,
        "modelspec.description": description,
        "modelspec.date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "modelspec.tags": f"concept-erase, unlearning, {method}",
        "modelspec.usage_hint": "Weight 1.0 applies the erasure as trained; lower weights erase less.",
    }
    if resolution:
        header["modelspec.resolution"] = resolution
    return header
