"""Load a local diffusers pipeline folder (Stable Diffusion, DDPM, ...) as a smcdiff model.

A pipeline folder is what ``DiffusionPipeline.save_pretrained`` writes (and what a hub snapshot
holds): ``model_index.json`` naming the components, and one subfolder per component::

    sd21/
      model_index.json            {"unet": ["diffusers", "UNet2DConditionModel"], ...}
      unet/        config.json + diffusion_pytorch_model.safetensors   (or transformer/)
      scheduler/   scheduler_config.json
      vae/         config.json + diffusion_pytorch_model.safetensors   (latent models only)
      text_encoder/ config.json + model.safetensors                     (optional, transformers)
      tokenizer/   tokenizer files                                      (optional, transformers)

:func:`load_pipeline` reads it **from disk only** (``local_files_only``: nothing is downloaded)
and returns a :class:`~smcdiff.models.latent.LatentDiffusion`: the EDM denoiser of the network and
its scheduler (:func:`~smcdiff.models.from_diffusers`), the :class:`~smcdiff.models.latent.VAEDecoder`
when there is a VAE (else the model is a pixel model), and a
:class:`~smcdiff.models.latent.PromptEncoder` when there are a text encoder and a tokenizer
(without them, pass prompt embeddings yourself). Without ``model_index.json`` the components are
found by their subfolders and the ``_class_name`` in their configs.

A folder that is not what it should be fails with a message naming the component: a missing
folder or component is a ``FileNotFoundError``; an unreadable config, weights that are truncated or
do not fit the config, or an unknown class is a
:class:`~smcdiff.models.file_formats.FileFormatError` (a ``ValueError``).

    from smcdiff.models.pipeline_folder import load_pipeline
    model = load_pipeline("stable-diffusion-2-1-base", dtype=torch.float16, device="cuda", max_batch=16)
    emb = model.prompt_encoder(["a cat and a dog", ""])        # (2, 77, 1024)
    model.denoiser, model.shape, model.decoder                  # D(x, σ, **cond), (4, 64, 64), the VAE

``device`` moves the networks there (their outputs come back to the sampler's device).
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

from smcdiff.models.file_formats import FileFormatError
from smcdiff.models.latent import (
    LatentDiffusion,
    PromptEncoder,
    VAEDecoder,
    latent_shape,
)

__all__ = ["NETWORK_KEYS", "load_pipeline", "read_model_index"]

#: Subfolders that may hold the denoising network, in the order they are looked for.
NETWORK_KEYS = ("unet", "transformer")
_CONFIG_FILES = {"scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json"}


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise FileFormatError(f"{path}: the {what} is not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}: the {what} must hold a JSON object, got {type(data).__name__}")
    return data


def read_model_index(folder) -> dict[str, tuple[str, str]]:
    """``{component: (library, class name)}`` of a pipeline folder: from ``model_index.json``, or,
    without one, from the subfolders' configs (``_class_name``, ``architectures``, ``tokenizer_class``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"pipeline folder {folder} does not exist (expected a local diffusers pipeline "
                                "folder with unet/ (or transformer/), scheduler/ and optionally vae/, text_encoder/, "
                                "tokenizer/)")
    index_file = folder / "model_index.json"
    if index_file.exists():
        index = _read_json(index_file, "pipeline index (model_index.json)")
        out = {}
        for name, value in index.items():
            if name.startswith("_") or not isinstance(value, (list, tuple)):
                continue  # "_class_name", flags such as "requires_safety_checker"
            if len(value) != 2:
                raise FileFormatError(f"{index_file}: entry {name!r} must be [library, class name], got {value!r}")
            if value[0] is not None and value[1] is not None:  # [null, null]: an absent optional component
                out[name] = (str(value[0]), str(value[1]))
        return out
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        cfg_file = sub / _CONFIG_FILES.get(sub.name, "config.json")
        if not cfg_file.exists():
            continue
        cfg = _read_json(cfg_file, f"{sub.name} config")
        if "_class_name" in cfg:
            out[sub.name] = ("diffusers", str(cfg["_class_name"]))
        elif cfg.get("architectures"):
            out[sub.name] = ("transformers", str(cfg["architectures"][0]))
        elif "tokenizer_class" in cfg:
            out[sub.name] = ("transformers", str(cfg["tokenizer_class"]))
    return out


def _load(folder: Path, name: str, library: str, class_name: str, dtype=None):
    """One component, from ``folder/name``, with its library's ``from_pretrained`` (local files only)."""
    sub = folder / name
    if not sub.is_dir():
        raise FileNotFoundError(f"{folder}: component {name!r} ({class_name}) has no folder {sub}")
    if library not in ("diffusers", "transformers"):
        raise FileFormatError(f"{folder}: component {name!r} comes from library {library!r}; "
                              "only diffusers and transformers components can be loaded")
    try:
        module = importlib.import_module(library)
    except ImportError as err:
        raise ImportError(f"{folder}: component {name!r} needs {library} (pip install {library})") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise FileFormatError(f"{folder}: component {name!r} names class {class_name!r}, which {library} "
                              f"{getattr(module, '__version__', '')} does not have")
    kwargs = {"local_files_only": True}
    cast = dtype is not None and name not in ("scheduler", "tokenizer")
    if cast and library == "diffusers":
        kwargs["torch_dtype"] = dtype
    try:
        with warnings.catch_warnings():
            # A config written by another diffusers version lists keys this one ignores: not an error.
            warnings.filterwarnings("ignore", message=".*config attributes.*were passed to.*")
            component = cls.from_pretrained(sub, **kwargs)
        return component.to(dtype) if cast and library != "diffusers" else component
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        message = " ".join(str(err).split())
        if len(message) > 400:
            message = message[:400] + " ..."
        raise FileFormatError(f"{sub}: cannot load component {name!r} as {library}.{class_name}: "
                              f"{type(err).__name__}: {message}") from err


def load_pipeline(folder: str | os.PathLike, *, dtype=None, device=None, max_batch: int | None = None,
                  prediction_type: str | None = None, **adapter_options) -> LatentDiffusion:
    """A local diffusers pipeline folder as a :class:`~smcdiff.models.latent.LatentDiffusion`.

    ``dtype`` the networks' dtype (e.g. ``torch.float16``; the sampler stays float64), ``device``
    where the networks run, ``max_batch`` the largest batch sent to a network or the VAE in one
    call; ``prediction_type`` and ``adapter_options`` go to :func:`~smcdiff.models.from_diffusers`.
    """
    from smcdiff.models.diffusers_adapter import from_diffusers

    folder = Path(folder)
    index = read_model_index(folder)
    net_key = next((k for k in NETWORK_KEYS if k in index), None)
    if net_key is None:
        raise FileNotFoundError(f"{folder}: no denoising network found (expected a unet/ or transformer/ "
                                f"component; found {sorted(index) or 'none'})")
    if "scheduler" not in index:
        raise FileNotFoundError(f"{folder}: no scheduler/ component (its scheduler_config.json gives the noise "
                                "schedule and the prediction type)")
    parts = {"scheduler": _load(folder, "scheduler", *index["scheduler"])}
    for name in (net_key, "vae", "text_encoder"):
        if name in index:
            parts[name] = _load(folder, name, *index[name], dtype=dtype)
            parts[name].eval()
            if device is not None:
                parts[name].to(device)
    if "tokenizer" in index and "text_encoder" in parts:
        parts["tokenizer"] = _load(folder, "tokenizer", *index["tokenizer"])
    net = parts[net_key]
    denoiser = from_diffusers(net, parts["scheduler"], dtype=dtype, max_batch=max_batch,
                              prediction_type=prediction_type, **adapter_options)
    decoder = VAEDecoder(parts["vae"], dtype=dtype, max_batch=max_batch) if "vae" in parts else None
    encoder = None
    if "text_encoder" in parts and "tokenizer" in parts:
        encoder = PromptEncoder(parts["tokenizer"], parts["text_encoder"], max_batch=max_batch)
    return LatentDiffusion(denoiser, latent_shape(net), decoder, encoder, parts)
