"""Cached priors for stagewise training (``TrainConfig.cached_priors``): P^{s-1} of the frozen
stages over a whole case, computed once per case and stage as inference computes it, kept in
memory and, with ``TrainConfig.prior_cache_dir``, on disk under a name that carries a digest of
the frozen weights. A prepared training set streams its patches from worker processes: there the
priors go to disk only (``prior_files``) and each worker memory-maps them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hipas_core.sts.data import TrainingCase
from hipas_core.sts.train_config import TrainConfig

__all__ = ["cached_prior", "prior_files"]


def cached_prior(model, cache: dict, case: TrainingCase, *, config: TrainConfig, device, autocast) -> np.ndarray:
    """P^{s-1} over the whole crop of ``case`` from the frozen stages 0..s-1 (s = cache["stage"]),
    computed once per case and stage with the inference window and overlap; with
    ``config.prior_cache_dir`` read from (or written to) disk as well."""
    if case.name not in cache:
        path = _prior_path(model, cache, case, config=config, device=device)
        if path is not None and path.is_file():
            try:
                cache[case.name] = np.load(path)
                return cache[case.name]
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
        from hipas_core.sts.cascade import cascade_probabilities
        from hipas_core.sts.sliding_window import fitted_window, sliding_window_predict

        window = tuple(config.inference_window or config.patch)
        device_type, dtype, enabled = autocast

        def slide(fn, volume):
            with torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled):
                return sliding_window_predict(fn, volume, window=fitted_window(window, tuple(volume.shape[1:])),
                                              overlap=config.inference_overlap, out_channels=2)

        image = torch.from_numpy(case.image.astype(np.float32)).to(device)
        probs = cascade_probabilities(model, image, slide=slide, last_stage=cache["stage"] - 1)
        cache[case.name] = probs.cpu().numpy().astype(np.float16)
        if path is not None:
            from hipas_core.atomic import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, cache[case.name])
    return cache[case.name]


def _prior_path(model, cache: dict, case: TrainingCase, *, config: TrainConfig, device) -> Path | None:
    """Where the prior of ``case`` lies on disk: named by the case, the stage, a digest of what
    it depends on (the frozen stages and transmissions, window, overlap, device type) and one of
    the case's image (a case prepared again, e.g. noise-harmonized, never reads the old prior);
    None without ``config.prior_cache_dir``."""
    if config.prior_cache_dir is None:
        return None
    if "digest" not in cache:
        import hashlib

        stage = cache["stage"]
        digest = hashlib.sha256()
        frozen = [*model.stages[:stage], *model.transmissions[:stage - 1]]
        for module in frozen:
            for name, tensor in module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        window = tuple(config.inference_window or config.patch)
        digest.update(repr((window, config.inference_overlap, torch.device(device).type)).encode())
        cache["digest"] = digest.hexdigest()[:16]
    images = cache.setdefault("image_digests", {})  # each image read once, not once per lookup
    if case.name not in images:
        images[case.name] = _image_digest(case)
    return Path(config.prior_cache_dir) / f"{case.name}-prior{cache['stage']}-{cache['digest']}-{images[case.name]}.npy"


def _image_digest(case: TrainingCase) -> str:
    import hashlib

    image = np.ascontiguousarray(case.image)
    return hashlib.blake2b(memoryview(image).cast("B"), digest_size=6).hexdigest()


def prior_files(model, stage: int, cases, *, config: TrainConfig, device, autocast) -> dict[str, str]:
    """{case name: .npy path} of P^{stage-1} for every case of ``cases`` and each of its variants
    (a CTPA case's synthetic NCCT), computed where the file is missing and written to
    ``config.prior_cache_dir`` (required); nothing stays in memory."""
    if config.prior_cache_dir is None:
        raise ValueError("prior_files needs config.prior_cache_dir")
    cache: dict = {"stage": stage}
    files = {}
    for case in cases:
        for item in (case, *case.variants.values()):
            path = _prior_path(model, cache, item, config=config, device=device)
            if not path.is_file():
                cached_prior(model, cache, item, config=config, device=device, autocast=autocast)
                cache.pop(item.name)
            files[item.name] = str(path)
    return files
