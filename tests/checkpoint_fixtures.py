"""Writers of small SAE checkpoints in each library's real on-disk layout (file names, tensor keys,
orientation, config keys), for tests. Each writer returns the stored arrays as float64 numpy arrays
(after any bf16 rounding), keyed by the names the file uses, plus the config it wrote.

Layouts follow: sae-lens 6.x ``save_inference_model`` / 5.x ``save_model`` and training runner
configs; sparsify ``SparseCoder.save_to_disk`` + trainer ``config.json``; Gemma Scope
``layer_L/width_W/average_l0_N/params.npz`` and Gemma Scope 2 ``params.safetensors``;
dictionary_learning ``trainer_i/ae.pt`` (``torch.save`` of a state dict) + ``config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

HF_SHA = "0123456789abcdef0123456789abcdef01234567"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _t(array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(dtype)


def _stored(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.to(torch.float64).numpy() for k, v in tensors.items()}


def encoder_decoder(rng: np.random.Generator, d_in: int, d_sae: int) -> dict[str, np.ndarray]:
    """Random SAE weights in sae-lens orientation with pre-activations spread around 0."""
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in),
        "W_dec": rng.normal(size=(d_sae, d_in)) / np.sqrt(d_in) * rng.uniform(0.5, 2.0, size=(d_sae, 1)),
        "b_enc": rng.normal(size=d_sae) * 0.2,
        "b_dec": rng.normal(size=d_in) * 0.3,
    }


def hf_cache_snapshot(root: Path, repo: str) -> Path:
    """``root/models--owner--name/snapshots/<sha>`` (the Hub cache layout), created."""
    owner, name = repo.split("/")
    snap = root / f"models--{owner}--{name}" / "snapshots" / HF_SHA
    snap.mkdir(parents=True, exist_ok=True)
    (root / f"models--{owner}--{name}" / "refs").mkdir(exist_ok=True)
    (root / f"models--{owner}--{name}" / "refs" / "main").write_text(HF_SHA)
    return snap


# ------------------------------------------------------------------------------------------- SAELens
def write_saelens(folder: Path, architecture: str = "standard", *, d_in: int = 8, d_sae: int = 32,
                  k: int = 4, seed: int = 0, apply_b_dec_to_input: bool = True,
                  normalize_activations: str = "none", rescale_acts_by_decoder_norm: bool = False,
                  model_name: str = "gpt2", hook_name: str = "blocks.3.hook_resid_post",
                  weight_dtype: torch.dtype = torch.float32, version: str = "6.54.12",
                  batchtopk_threshold: float = 0.25) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A sae-lens v6 inference folder (``save_inference_model``): cfg.json + sae_weights.safetensors.

    ``architecture="batchtopk"`` writes what sae-lens writes for a trained BatchTopK SAE: a
    ``jumprelu`` config with one shared threshold and ``metadata.training_architecture``.
    """
    rng = _rng(seed)
    w = encoder_decoder(rng, d_in, d_sae)
    tensors = {"W_enc": _t(w["W_enc"], weight_dtype), "W_dec": _t(w["W_dec"], weight_dtype),
               "b_dec": _t(w["b_dec"], weight_dtype)}
    saved_arch = architecture
    metadata: dict[str, Any] = {
        "sae_lens_version": version, "sae_lens_training_version": version, "model_name": model_name,
        "hook_name": hook_name, "hook_head_index": None, "model_class_name": "HookedTransformer",
        "context_size": 128, "prepend_bos": True, "dataset_path": "monology/pile-uncopyrighted",
        "dataset_trust_remote_code": False, "seqpos_slice": [None], "model_from_pretrained_kwargs": {},
        "neuronpedia_id": None, "exclude_special_tokens": False,
    }
    if architecture == "gated":
        tensors.update(b_gate=_t(rng.normal(size=d_sae) * 0.2, weight_dtype),
                       b_mag=_t(rng.normal(size=d_sae) * 0.2, weight_dtype),
                       r_mag=_t(rng.normal(size=d_sae) * 0.3, weight_dtype))
    else:
        tensors["b_enc"] = _t(w["b_enc"], weight_dtype)
    if architecture == "jumprelu":
        tensors["threshold"] = _t(rng.uniform(0.05, 0.5, size=d_sae), weight_dtype)
    if architecture == "batchtopk":
        saved_arch = "jumprelu"
        tensors["threshold"] = torch.full((d_sae,), batchtopk_threshold, dtype=weight_dtype)
        metadata["training_architecture"] = "batchtopk"
        metadata["training_architecture_details"] = {
            "k": float(k), "topk_threshold_lr": 0.01, "aux_loss_coefficient": 1.0,
            "rescale_acts_by_decoder_norm": True, "decoder_init_norm": 0.1, "use_sparse_activations": False}
    else:
        metadata["training_architecture"] = architecture
        metadata["training_architecture_details"] = {"decoder_init_norm": 0.1}
    cfg: dict[str, Any] = {
        "d_in": d_in, "d_sae": d_sae, "dtype": str(weight_dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": normalize_activations,
        "reshape_activations": "none", "metadata": metadata, "architecture": saved_arch,
    }
    if architecture == "topk":
        cfg.update(k=k, rescale_acts_by_decoder_norm=rescale_acts_by_decoder_norm)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k_: v.contiguous() for k_, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sparsity = torch.log10(torch.rand(d_sae) + 1e-10)
    save_file({"sparsity": sparsity}, str(folder / "sparsity.safetensors"))
    return _stored(tensors), cfg


def write_saelens_training_batchtopk(folder: Path, *, d_in: int = 8, d_sae: int = 32, k: int = 4, seed: int = 0,
                                     topk_threshold: float = 0.3) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A sae-lens v6 *training* checkpoint (``save_model`` of a BatchTopKTrainingSAE): architecture
    ``batchtopk``, training config keys, and a float64 scalar ``topk_threshold`` buffer."""
    rng = _rng(seed)
    w = encoder_decoder(rng, d_in, d_sae)
    tensors = {"W_enc": _t(w["W_enc"]), "W_dec": _t(w["W_dec"]), "b_enc": _t(w["b_enc"]), "b_dec": _t(w["b_dec"]),
               "topk_threshold": torch.tensor(topk_threshold, dtype=torch.float64)}
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "decoder_init_norm": 0.1,
           "k": float(k), "use_sparse_activations": False, "aux_loss_coefficient": 1.0,
           "rescale_acts_by_decoder_norm": True, "topk_threshold_lr": 0.01,
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "model_name": "gpt2", "hook_name": "blocks.1.hook_resid_post",
                        "training_architecture": "batchtopk"},
           "architecture": "batchtopk"}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return _stored(tensors), cfg


def write_saelens_pre6(folder: Path, architecture: str = "standard", *, d_in: int = 8, d_sae: int = 32, k: int = 4,
                       seed: int = 0, apply_b_dec_to_input: bool | None = None,
                       finetuning_scale: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A pre-6.0 sae-lens folder: a flat cfg.json overwritten with the training runner config
    (``hook_point``, ``activation_fn_str``/``activation_fn_kwargs``, bool ``normalize_activations``,
    ``dtype: "torch.float32"``, top-level ``sae_lens_version``)."""
    rng = _rng(seed)
    w = encoder_decoder(rng, d_in, d_sae)
    tensors = {"W_enc": _t(w["W_enc"]), "W_dec": _t(w["W_dec"]), "b_enc": _t(w["b_enc"]), "b_dec": _t(w["b_dec"])}
    cfg: dict[str, Any] = {
        "model_name": "tiny-stories-1M", "model_class_name": "HookedTransformer",
        "hook_point": "blocks.1.hook_resid_pre", "hook_point_eval": "blocks.{layer}.attn.pattern",
        "hook_point_layer": 1, "hook_point_head_index": None, "dataset_path": "roneneldan/TinyStories",
        "is_dataset_tokenized": False, "context_size": 128, "use_cached_activations": False,
        "d_in": d_in, "d_sae": d_sae, "b_dec_init_method": "geometric_median", "expansion_factor": d_sae // d_in,
        "activation_fn_str": "relu", "activation_fn_kwargs": {}, "normalize_sae_decoder": True,
        "noise_scale": 0.0, "from_pretrained_path": None, "decoder_orthogonal_init": False,
        "decoder_heuristic_init": False, "init_encoder_as_decoder_transpose": False,
        "n_batches_in_buffer": 64, "training_tokens": 1000000, "finetuning_tokens": 0, "store_batch_size_prompts": 16,
        "train_batch_size_tokens": 4096, "normalize_activations": False, "device": "cuda", "act_store_device": "cuda",
        "seed": 42, "dtype": "torch.float32", "prepend_bos": True, "adam_beta1": 0, "adam_beta2": 0.999,
        "mse_loss_normalization": None, "l1_coefficient": 0.001, "lp_norm": 1, "lr": 0.0003,
        "lr_scheduler_name": "constant", "lr_warm_up_steps": 0, "log_to_wandb": False,
        "wandb_project": "mats_sae_training_language_model", "checkpoint_path": "checkpoints/abc",
        "verbose": True, "model_kwargs": {}, "model_from_pretrained_kwargs": {}, "sae_lens_version": "3.13.1",
        "sae_lens_training_version": "3.13.1", "tokens_per_buffer": 67108864,
    }
    if architecture == "topk":
        cfg["activation_fn_str"] = "topk"
        cfg["activation_fn_kwargs"] = {"k": k}
    elif architecture in ("jumprelu", "gated"):
        # 5.x configs name the architecture and spell the activation ``activation_fn_str``
        cfg.update(architecture=architecture, sae_lens_version="5.11.0", sae_lens_training_version="5.11.0",
                   finetuning_scaling_factor=False)
        if architecture == "jumprelu":
            tensors["threshold"] = _t(rng.uniform(0.05, 0.5, size=d_sae))
        else:
            del tensors["b_enc"]
            tensors.update(b_gate=_t(rng.normal(size=d_sae) * 0.2), b_mag=_t(rng.normal(size=d_sae) * 0.2),
                           r_mag=_t(rng.normal(size=d_sae) * 0.3))
    if apply_b_dec_to_input is not None:
        cfg["apply_b_dec_to_input"] = apply_b_dec_to_input
    if finetuning_scale:
        cfg["finetuning_scaling_factor"] = True
        tensors["scaling_factor"] = _t(rng.uniform(0.5, 1.5, size=d_sae))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return _stored(tensors), cfg


# ------------------------------------------------------------------------------------------ sparsify
def write_sparsify(root: Path, hookpoint: str = "layers.3", *, d_in: int = 8, num_latents: int = 32, k: int = 4,
                   seed: int = 0, weight_dtype: torch.dtype = torch.bfloat16,
                   model: str = "EleutherAI/pythia-70m") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A sparsify run folder: ``root/config.json`` (TrainConfig) and ``root/<hookpoint>/{cfg.json,
    sae.safetensors}`` with ``encoder.weight [num_latents, d_in]``, ``encoder.bias``, ``W_dec
    [num_latents, d_in]``, ``b_dec [d_in]`` (bf16 by default, as on the Hub)."""
    rng = _rng(seed)
    w = encoder_decoder(rng, d_in, num_latents)
    tensors = {"encoder.weight": _t(w["W_enc"].T, weight_dtype), "encoder.bias": _t(w["b_enc"], weight_dtype),
               "W_dec": _t(w["W_dec"], weight_dtype), "b_dec": _t(w["b_dec"], weight_dtype)}
    sae_cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": num_latents,
               "k": k, "multi_topk": False, "skip_connection": False, "transcode": False}
    folder = root / hookpoint
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae.safetensors"), metadata={"format": "pt"})
    (folder / "cfg.json").write_text(json.dumps({**sae_cfg, "d_in": d_in}))
    run_cfg = {"sae": sae_cfg, "batch_size": 32, "grad_acc_steps": 1, "micro_acc_steps": 1, "loss_fn": "fvu",
               "optimizer": "signum", "lr": None, "lr_warmup_steps": 1000, "k_decay_steps": 0, "auxk_alpha": 0.0,
               "dead_feature_threshold": 10000000, "hookpoints": [hookpoint], "init_seeds": [0], "layers": [],
               "layer_stride": 1, "distribute_modules": False, "save_every": 1000, "save_best": False,
               "finetune": None, "log_to_wandb": False, "run_name": None, "wandb_log_frequency": 1,
               "model": model, "dataset": "EleutherAI/SmolLM2-135M-10B", "split": "train", "ctx_len": 2048}
    (root / "config.json").write_text(json.dumps(run_cfg))
    return _stored(tensors), {**sae_cfg, "d_in": d_in}


# --------------------------------------------------------------------------------------- Gemma Scope
def write_gemmascope_npz(hub_root: Path, *, repo: str = "google/gemma-scope-2b-pt-res", layer: int = 3,
                         width: str = "4k", average_l0: int = 20, d_in: int = 16,
                         seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """``models--google--gemma-scope-2b-pt-res/snapshots/<sha>/layer_3/width_4k/average_l0_20/params.npz``
    with ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold`` (float32)."""
    d_sae = int(width[:-1]) * {"k": 1024, "m": 1024 * 1024}[width[-1]]
    rng = _rng(seed)
    w = {k: v.astype(np.float32) for k, v in encoder_decoder(rng, d_in, d_sae).items()}
    w["threshold"] = rng.uniform(0.05, 0.5, size=d_sae).astype(np.float32)
    folder = hf_cache_snapshot(hub_root, repo) / f"layer_{layer}" / f"width_{width}" / f"average_l0_{average_l0}"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **w)
    return folder, {k: v.astype(np.float64) for k, v in w.items()}


def write_gemmascope2(hub_root: Path, *, repo: str = "google/gemma-scope-2-270m-pt", site: str = "resid_post",
                      layer: int = 5, width: str = "16k", l0: str = "small", d_in: int = 8, seed: int = 0,
                      with_config: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """``<site>/layer_{L}_width_{W}_l0_{size}/params.safetensors`` with lowercase ``w_enc``/``w_dec`` and an
    optional ``config.json`` (Gemma Scope 2)."""
    d_sae = int(width[:-1]) * {"k": 1024, "m": 1024 * 1024}[width[-1]]
    rng = _rng(seed)
    w = encoder_decoder(rng, d_in, d_sae)
    tensors = {"w_enc": _t(w["W_enc"]), "w_dec": _t(w["W_dec"]), "b_enc": _t(w["b_enc"]), "b_dec": _t(w["b_dec"]),
               "threshold": _t(rng.uniform(0.05, 0.5, size=d_sae))}
    folder = hf_cache_snapshot(hub_root, repo) / site / f"layer_{layer}_width_{width}_l0_{l0}"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "params.safetensors"))
    if with_config:
        (folder / "config.json").write_text(json.dumps({
            "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
            "hf_hook_point_in": f"model.layers.{layer}.output"}))
    return folder, _stored(tensors)


# -------------------------------------------------------------------------------- dictionary_learning
_DL_TRAINERS = {
    "AutoEncoder": "StandardTrainer", "AutoEncoderNew": "StandardTrainerAprilUpdate",
    "AutoEncoderTopK": "TopKTrainer", "BatchTopKSAE": "BatchTopKTrainer",
    "MatryoshkaBatchTopKSAE": "MatryoshkaBatchTopKTrainer", "JumpReluAutoEncoder": "JumpReluTrainer",
    "GatedAutoEncoder": "GatedSAETrainer",
}


def dictionary_learning_state(dict_class: str, *, d_in: int = 8, d_sae: int = 32, k: int = 4, seed: int = 0,
                              threshold: float = 0.2) -> dict[str, torch.Tensor]:
    """The state dict each dictionary_learning class saves (its parameter/buffer names and shapes)."""
    rng = _rng(seed)
    w = encoder_decoder(rng, d_in, d_sae)
    enc_w, dec_w = _t(w["W_enc"].T), _t(w["W_dec"].T)  # nn.Linear: [out, in]
    if dict_class == "AutoEncoder":
        return {"bias": _t(w["b_dec"]), "encoder.weight": enc_w, "encoder.bias": _t(w["b_enc"]),
                "decoder.weight": dec_w}
    if dict_class == "AutoEncoderNew":
        return {"encoder.weight": enc_w, "encoder.bias": _t(w["b_enc"]), "decoder.weight": dec_w,
                "decoder.bias": _t(w["b_dec"])}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {"k": torch.tensor(k, dtype=torch.int), "threshold": torch.tensor(threshold, dtype=torch.float32),
                "decoder.weight": dec_w, "encoder.weight": enc_w, "encoder.bias": _t(w["b_enc"]),
                "b_dec": _t(w["b_dec"])}
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {"k": torch.tensor(k, dtype=torch.int), "threshold": torch.tensor(threshold, dtype=torch.float32),
                "group_sizes": torch.tensor([d_sae // 4, d_sae // 4, d_sae // 2]), "W_enc": _t(w["W_enc"]),
                "b_enc": _t(w["b_enc"]), "W_dec": _t(w["W_dec"]), "b_dec": _t(w["b_dec"])}
    if dict_class == "JumpReluAutoEncoder":
        return {"W_enc": _t(w["W_enc"]), "b_enc": _t(w["b_enc"]), "W_dec": _t(w["W_dec"]), "b_dec": _t(w["b_dec"]),
                "threshold": _t(rng.uniform(0.05, 0.5, size=d_sae))}
    if dict_class == "GatedAutoEncoder":
        return {"decoder_bias": _t(w["b_dec"]), "encoder.weight": enc_w, "r_mag": _t(rng.normal(size=d_sae) * 0.3),
                "gate_bias": _t(rng.normal(size=d_sae) * 0.2), "mag_bias": _t(rng.normal(size=d_sae) * 0.2),
                "decoder.weight": dec_w}
    raise ValueError(dict_class)


def write_dictionary_learning(run_dir: Path, dict_class: str, *, trainer: int = 0, d_in: int = 8, d_sae: int = 32,
                              k: int = 4, seed: int = 0, layer: int = 3, lm_name: str = "EleutherAI/pythia-70m-deduped",
                              threshold: float = 0.2, write_config: bool = True
                              ) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """``run_dir/trainer_<i>/ae.pt`` (``torch.save`` of the state dict) and ``config.json`` with the
    ``trainer`` and ``buffer`` blocks ``dictionary_learning.training`` writes."""
    state = dictionary_learning_state(dict_class, d_in=d_in, d_sae=d_sae, k=k, seed=seed, threshold=threshold)
    folder = run_dir / f"trainer_{trainer}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    trainer_cfg: dict[str, Any] = {
        "trainer_class": _DL_TRAINERS[dict_class], "dict_class": dict_class, "lr": 0.0001, "steps": 1000,
        "seed": seed, "activation_dim": d_in, "dict_size": d_sae, "device": "cuda:0", "layer": layer,
        "lm_name": lm_name, "wandb_name": f"{_DL_TRAINERS[dict_class]}-trainer_{trainer}",
        "submodule_name": f"resid_post_layer_{layer}"}
    if "k" in state:
        trainer_cfg.update(k=k, auxk_alpha=0.03125, warmup_steps=1000, decay_start=None, threshold_beta=0.999,
                           threshold_start_step=1000)
    config = {"trainer": trainer_cfg,
              "buffer": {"d_submodule": d_in, "io": "out", "n_ctxs": 3000, "ctx_len": 128,
                         "refresh_batch_size": 32, "out_batch_size": 2048, "device": "cuda:0"}}
    if write_config:
        (folder / "config.json").write_text(json.dumps(config))
    return folder, {k_: v.to(torch.float64).numpy() for k_, v in state.items()}, config


class _RunsCommand:
    """An object whose unpickling would run a shell command (the attack a weights_only load must stop)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """An ``ae.pt`` whose state dict holds an object that would ``touch marker`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"encoder.weight": torch.zeros(2, 2), "payload": _RunsCommand(marker)}, path)


def write_fake_safetensors(path: Path, header: dict[str, Any], data: bytes = b"",
                           header_len: int | None = None) -> None:
    """A safetensors file with a hand-written header (for malformed-header tests)."""
    raw = json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(length.to_bytes(8, "little") + raw + data)
