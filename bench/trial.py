"""One trial, from plain settings to a record: data -> client update -> attack -> metrics -> record.

This is the whole pipeline, with no Hydra in it. ``trial()`` is the Python API
for notebooks and scripts; the Hydra runner (``bench.run``) and the performance
harness (``bench.perf``) call the same functions. A trial is a pure function of
its settings; its record is keyed by a hash of the settings that can change its
numbers (``trial_config``), so a folder of records is resumable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from bench import checkpoints as ckpt
from bench import config as schema
from bench import records as rec
from bench.client import build_client, client_config, client_fields, client_key, client_round
from bench.data import ImageDataset, load_dataset
from bench.defence_costs import defence_fields
from bench.defences import defence_config, defence_from_config, defence_key
from bench.errors import InfeasibleBatchError, UserError
from bench.images import save_images
from bench.metrics import LPIPSScorer, flat_colour_psnr, label_accuracy, match, psnr, score
from bench.provenance import REPO_ROOT, device_name, environment
from bench.sampler import min_feasible_dup_ratio, sample_batch
from bench.stage import prepare_stage, stage_epochs
from bench.system import configure_device, is_out_of_memory, pick_device
from bench.training import prepare_model
from methods.base import Attack, NotApplicableError, Observation, Reconstruction, get_method_class, is_reference
from methods.budget import evaluations_so_far, metered
from methods.checkpoint import Checkpointer, CheckpointMismatchError, checkpointing
from methods.labels import infer_labels
from methods.options import option_fields

CONF_DIR = REPO_ROOT / "conf"
LPIPS = LPIPSScorer()


@dataclass
class Round:
    """What one federated round produced: the client's batch (ground truth) and what the attacker observes."""

    dataset: ImageDataset
    truth: torch.Tensor
    true_labels: torch.Tensor
    observation: Observation
    dup_ratio: float
    defence: dict[str, Any]  # the record's defence columns (name, strength, utility, training cost)
    # the record's training-stage columns (epoch, held-out accuracy) for model.state=trained@E; empty otherwise
    model_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrialResult:
    """A trial's record, plus the tensors a notebook wants (None when the record was found on disk)."""

    record: dict[str, Any]
    reconstruction: torch.Tensor | None = None
    truth: torch.Tensor | None = None
    predicted_labels: torch.Tensor | None = None
    true_labels: torch.Tensor | None = None


def derive_seed(seed: int, stream: str) -> int:
    """Independent, reproducible seeds for the separate random streams of one trial."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:7], "little")


def group_node(group: str, name: str) -> dict[str, Any]:
    """The default node of config group ``group`` (``conf/<group>/<name>.yaml``), as plain containers."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise UserError(f"unknown {group} {name!r}; available: {', '.join(options)}")
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {k: v for k, v in node.items() if k != "defaults"}


def method_node(name: str) -> dict[str, Any]:
    """The ``method`` config of a registered attack: its name and every option, unset (``None``)."""
    return {"name": name, "params": dict.fromkeys(option_fields(get_method_class(name)))}


def settings_for(method: str = "ig", **given: Any) -> dict[str, Any]:
    """Complete settings from keyword arguments, as the Hydra runner composes them from its config.

    Keys of the schema (``bench.config``) are settings; ``dataset``, ``model``, ``client`` and ``defence`` take a
    name or a mapping (``{"name": "convnet", "state": "trained"}``, ``{"name": "clip", "max_norm": 0.1}``); every
    other keyword is an option of ``method``.
    """
    settings = schema.defaults()
    settings["sweep_name"] = "api"
    for group, default in (("dataset", "crops"), ("model", "convnet"), ("client", "fedsgd"), ("defence", "none")):
        spec = given.pop(group, default)
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        settings[group] = {**group_node(group, spec["name"]), **spec}
    options = {k: given.pop(k) for k in list(given) if k not in schema.SETTINGS}
    settings.update(given)
    settings["method"] = {"name": method, "params": options}
    return settings


@functools.lru_cache(maxsize=4)
def _cached_dataset(spec_json: str) -> ImageDataset:
    spec = json.loads(spec_json)
    return load_dataset(spec.pop("name"), **{k: v for k, v in spec.items() if v is not None})


def dataset_for(spec: Mapping[str, Any]) -> ImageDataset:
    """The dataset a ``dataset`` node describes, built once per process."""
    return _cached_dataset(rec.canonical_json(dict(spec)))


def resolve_dup_ratio(dup_ratio: float | str, dataset: ImageDataset, batch_size: int) -> float:
    """``dup_ratio=least`` asks for the least duplication the dataset allows at this batch size."""
    if dup_ratio != "least":
        return dup_ratio
    least = min_feasible_dup_ratio(dataset.labels, dataset.num_classes, batch_size)
    if least is None:
        raise InfeasibleBatchError(
            f"batch_size={batch_size} cannot be drawn from {dataset.name} at any dup_ratio; lower batch_size"
        )
    return least


def draw_round(settings: Mapping[str, Any], device: torch.device) -> Round:
    """data -> client update: the batch, its labels and what the attacker observes."""
    dataset = dataset_for(settings["dataset"])
    batch_size, seed = settings["batch_size"], settings["seed"]
    dup_ratio = resolve_dup_ratio(settings["dup_ratio"], dataset, batch_size)
    indices = sample_batch(
        dataset.labels,
        dataset.num_classes,
        batch_size,
        dup_ratio,
        seed,
        settings.get("composition", "even"),
        settings.get("alpha", 0.5),
    )
    truth, true_labels = dataset.batch(indices)
    truth, true_labels = truth.to(device), true_labels.to(device)
    model_spec = settings["model"]
    state = model_spec.get("state", "untrained")
    model_fields: dict[str, Any] = {}
    train_images = train_labels = None
    if state == "trained":
        train_images, train_labels = dataset.batch(torch.arange(min(len(dataset), 5000)))
    if stage_epochs(state) is not None:  # trained@E: a checkpoint of one seeded training run (bench/stage.py)
        model, model_fields = prepare_stage(
            model_spec,
            dataset,
            dataset_spec=settings["dataset"],
            seed=seed,
            cache_dir=_inside_repo(Path(settings["cache_dir"])) / "models",
            device=device,
        )
    else:
        model = prepare_model(
            model_spec["name"],
            state=state,
            num_classes=dataset.num_classes,
            image_shape=dataset.image_shape,
            seed=seed,
            train_images=train_images,
            train_labels=train_labels,
            mean=dataset.mean,
            std=dataset.std,
            cache_dir=_inside_repo(Path(settings["cache_dir"])) / "models",
            device=device,
            # the dataset's spec identifies the training images: no hashing of their pixels
            data_identity={"dataset": dict(settings["dataset"]), "first": int(len(train_images))}
            if state == "trained"
            else None,
            **{k: v for k, v in model_spec.items() if k not in ("name", "state")},
        ).to(device)
    defence, _ = defence_from_config(defence_config(settings))
    try:
        client = client_round(
            model,
            truth,
            true_labels,
            mean=dataset.mean,
            std=dataset.std,
            num_classes=dataset.num_classes,
            mode=settings["client_mode"],
            labels_known=settings["labels_known"],
            defence=defence,
            defence_generator=torch.Generator().manual_seed(derive_seed(seed, "defence")),
            client=build_client(client_config(settings), batch_size),
            client_generator=torch.Generator().manual_seed(derive_seed(seed, "client")),
        )
    except NotApplicableError:
        raise
    except (RuntimeError, ValueError) as error:  # the model cannot take this batch at all: a configuration error
        shape = "x".join(map(str, dataset.image_shape))
        raise UserError(
            f"the client cannot compute its update with model {model_spec['name']!r} on {shape} images at "
            f"batch_size={batch_size} in client_mode={settings['client_mode']} ({str(error).splitlines()[0]}); "
            "use a larger dataset.resolution or batch_size, or client_mode=eval"
        ) from None
    costs = defence_fields(
        defence_config(settings),
        client,
        training=settings.get("defence_training") or {},
        model_name=model_spec["name"],
        model_kwargs={k: v for k, v in model_spec.items() if k not in ("name", "state")},
        dataset=dataset,
        seed=seed,
        defence_seed=derive_seed(seed, "defence-training"),
        cache_dir=_inside_repo(Path(settings["cache_dir"])) / "models",
    )
    return Round(dataset, truth, true_labels, client.observation, dup_ratio, costs, model_fields)


def trial_config(settings: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """What defines a trial, and so its record key: everything that can change its numbers, the device included."""
    composition = settings.get("composition", "even")
    # skewed batches join the key; even ones add nothing, so their keys stay what they were before skew existed
    skew = {} if composition == "even" else {"composition": composition, "alpha": settings["alpha"]}
    if settings["task"] == "labels":
        keys = ("dataset", "model", "batch_size", "dup_ratio", "seed", "client_mode")
        return {
            "task": "labels",
            "label_strategy": settings["label_strategy"],
            "device": device.type,
            **{k: settings[k] for k in keys},
            **skew,
            **defence_key(settings),
            **client_key(settings),
        }
    config = {key: settings[key] for key in schema.TRIAL_KEYS}
    config["device"] = device.type
    if config["batch_size"] == 1:  # one image has one class at every dup_ratio: B=1 at r=1 is B=1 at r=0
        config["dup_ratio"] = 0.0
    budget = schema.parse_budget(settings.get("budget"))
    options = schema.method_options(settings["method"], settings["profile"], settings["iterations"], budget)
    config["method"] = {"name": settings["method"]["name"], **options}
    # a budget joins the key only when set, so that the keys of runs without one stay what they were
    budget_part = {"budget": str(budget)} if budget is not None else {}
    return config | skew | defence_key(settings) | client_key(settings) | budget_part


def build_attack(settings: Mapping[str, Any]) -> Attack:
    budget = schema.parse_budget(settings.get("budget"))
    options = schema.method_options(settings["method"], settings["profile"], settings["iterations"], budget)
    return get_method_class(settings["method"]["name"])(**options)


def run_trial(settings: Mapping[str, Any], out_dir: Path | None = None, *, in_sweep: bool = False) -> TrialResult:
    """Run one trial, or find its finished record under ``out_dir``; write the record there (if given).

    In a sweep (``in_sweep``) a batch the data cannot supply is recorded as skipped; alone it is an error.
    """
    schema.validate(settings)
    name = settings["method"]["name"] if settings["task"] == "attack" else settings["label_strategy"]
    attack = build_attack(settings) if settings["task"] == "attack" else None
    device = pick_device(settings["device"], settings["profile"])
    config = trial_config(settings, device)
    key = rec.trial_key(config)
    path = rec.record_path(out_dir, key) if out_dir is not None else None
    if path is not None and path.exists():
        try:
            return TrialResult(rec.read_record(path) | {"resumed": True})
        except rec.CorruptRecordError as error:
            moved = rec.set_aside(path)
            print(f"warning: {error}; moved it to {moved} and re-running the trial", file=sys.stderr)

    configure_device(device, allow_tf32=settings["allow_tf32"])
    record: dict[str, Any] = {
        "record_version": rec.RECORD_VERSION,
        "key": key,
        "task": settings["task"],
        "method": name,
        "dataset": settings["dataset"]["name"],
        "model": settings["model"]["name"],
        "model_state": settings["model"].get("state", "untrained"),
        "profile": settings["profile"],
        "batch_size": settings["batch_size"],
        "dup_ratio": settings["dup_ratio"],
        "composition": settings.get("composition", "even"),
        "seed": settings["seed"],
        "labels_known": settings["labels_known"],
        **client_fields(settings),  # FedAvg's hyper-parameters; FedSGD records stay as they were
        "config": config,
        "device": device_name(device),
        **environment(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    started = time.perf_counter()
    record["cpu_started"] = time.process_time()  # popped by _finish: the trial's CPU seconds (threads=1: one core)
    try:
        drawn = draw_round(settings, device)
    except InfeasibleBatchError as error:
        if not in_sweep:
            raise
        return TrialResult(_finish(record | {"status": "skipped", "reason": str(error)}, path, started))
    except NotApplicableError as error:  # e.g. a defence that does not apply to this model
        return TrialResult(_finish(record | {"status": "skipped", "reason": str(error)}, path, started))
    record["dup_ratio"] = 0.0 if attack is not None and settings["batch_size"] == 1 else drawn.dup_ratio
    record.update(drawn.defence)
    record.update(drawn.model_fields)

    result = TrialResult(record, truth=drawn.truth, true_labels=drawn.true_labels)
    try:
        if attack is None:
            outcome = _label_trial(name, drawn, result)
        else:
            outcome = _attack_trial(settings, attack, drawn, result, out_dir, key)
    except UserError:
        raise
    except NotApplicableError as error:
        outcome = {"status": "skipped", "reason": str(error)}
    except Exception as error:  # a failed trial is a result: record it (with its traceback) and let the sweep go on
        if settings.get("debug"):
            traceback.print_exc()
        reason = f"{type(error).__name__}: {error}"
        if is_out_of_memory(error):
            reason = f"out of memory ({str(error).splitlines()[0]}); lower batch_size or use a smaller model"
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next trial of the sweep starts from an empty cache
        outcome = {"status": "failed", "reason": reason, "traceback": traceback.format_exc()}
    result.record = _finish(record | outcome, path, started)
    if out_dir is not None:  # the record is written: nothing is left to continue
        ckpt.checkpoint_path(out_dir, key).unlink(missing_ok=True)
    return result


def trial(method: str = "ig", *, out_dir: str | Path | None = None, **given: Any) -> TrialResult:
    """Run one trial from Python: ``bench.trial("ig", batch_size=4, dup_ratio=0.5, seed=0, restarts=2)``.

    Settings not given take the runner's defaults (``bench.config``). With ``out_dir`` the record and the
    image grid are written there and a finished record is returned instead of re-running (then the tensors
    are None). ``threads`` applies to the whole process, as in the runner.
    """
    settings = settings_for(method, **given)
    schema.validate(settings)
    if settings["threads"] is not None:
        torch.set_num_threads(int(settings["threads"]))
    return run_trial(settings, Path(out_dir) if out_dir is not None else None)


def _label_trial(strategy: str, drawn: Round, result: TrialResult) -> dict[str, Any]:
    started = time.perf_counter()
    predicted = infer_labels(strategy, drawn.observation)
    seconds = time.perf_counter() - started
    result.predicted_labels = predicted
    return {
        "status": "ok",
        "label_accuracy": label_accuracy(predicted.cpu(), drawn.true_labels.cpu()),
        "exact_multiset": sorted(predicted.tolist()) == sorted(drawn.true_labels.tolist()),
        "attack_seconds": seconds,
        "true_labels": drawn.true_labels.tolist(),
        "predicted_labels": predicted.tolist(),
    }


def _attack_trial(
    settings: Mapping[str, Any], attack: Attack, drawn: Round, result: TrialResult, out_dir: Path | None, key: str
) -> dict[str, Any]:
    truth, true_labels = drawn.truth, drawn.true_labels
    progress: list[list[float]] = []

    def on_progress(iteration: int, seconds: float, images: torch.Tensor) -> None:
        order = match(images, truth)
        progress.append([iteration, seconds, float(psnr(images[order], truth).mean()), evaluations_so_far()])

    checkpoint = None
    if out_dir is not None and (settings.get("checkpoint_every") or settings.get("checkpoint_minutes")):
        checkpoint = ckpt.checkpoint_path(out_dir, key)
    observation = drawn.observation
    try:
        reconstruction, resumes, evaluations = _reconstruct(
            settings, attack, observation, on_progress, progress, checkpoint, key
        )
    except CheckpointMismatchError as error:
        assert checkpoint is not None
        moved = ckpt.set_aside(checkpoint)
        print(
            f"warning: {checkpoint} does not fit this run ({error}); moved it to {moved}, starting the trial over",
            file=sys.stderr,
        )
        progress.clear()
        reconstruction, resumes, evaluations = _reconstruct(
            settings, attack, observation, on_progress, progress, checkpoint, key
        )
    if not torch.isfinite(reconstruction.images).all():
        raise FloatingPointError("the reconstruction contains NaN or inf")
    scores = score(reconstruction.images, truth, reconstruction.labels, true_labels, LPIPS)
    oracle_flat = flat_colour_psnr(truth)  # the oracle floor: each true image's own mean colour, flat
    matched = reconstruction.images[torch.tensor(scores.order)]
    result.reconstruction, result.predicted_labels = matched, reconstruction.labels
    if out_dir is not None:
        save_images(out_dir, key, truth, matched, settings["grid_images"])
    trace = reconstruction.trace
    return {
        "status": "ok",
        "reference": is_reference(attack),  # a floor (noise, mean), not an attack: reports draw it as a line
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        "lpips": scores.lpips,
        "label_accuracy": scores.label_accuracy,
        "iterations": trace[-1].iteration if trace else 0,
        # every model gradient the attack computed (methods.budget), the loop's and any outside it
        "gradient_evaluations": evaluations,
        "budget": settings.get("budget"),
        "attack_seconds": trace[-1].seconds if trace else 0.0,
        "seconds_per_iteration": trace[-1].seconds / trace[-1].iteration if trace else math.nan,
        "per_image_psnr": scores.per_image_psnr,
        "per_image_ssim": scores.per_image_ssim,
        "oracle_flat_psnr": sum(oracle_flat) / len(oracle_flat),
        "per_image_oracle_flat_psnr": oracle_flat,
        "true_labels": true_labels.tolist(),
        "predicted_labels": reconstruction.labels.tolist(),
        "trace": [[p.iteration, p.seconds, p.objective, p.evaluations] for p in rec.thin(trace)],
        "progress": progress,
        # how often the trial continued from a checkpoint; its attack_seconds then add up the runs' kept work
        **({"resumes": resumes} if resumes else {}),
    }


def _reconstruct(
    settings: Mapping[str, Any],
    attack: Attack,
    observation: Observation,
    on_progress: Any,
    progress: list[list[float]],
    checkpoint: Path | None,
    key: str,
) -> tuple[Reconstruction, int, int]:
    """The attack, checkpointed to ``checkpoint`` (and continued from it) when given; how often it resumed, and
    the gradient evaluations it made (``methods.budget``; under the ``budget`` setting, at most that many)."""
    # a CPU generator on every device: a seed means the same starting images on the CPU and on a GPU
    generator = torch.Generator().manual_seed(derive_seed(settings["seed"], "attack"))
    tracker = ckpt.TrialProgress(progress)
    checkpointer = None
    if checkpoint is not None:
        try:
            restored = ckpt.read_checkpoint(checkpoint, key, observation.device)
        except ckpt.CorruptCheckpointError as error:
            moved = ckpt.set_aside(checkpoint)
            print(f"warning: {error}; moved it to {moved} and starting the trial over", file=sys.stderr)
            restored = None
        checkpointer = Checkpointer(
            functools.partial(ckpt.write_checkpoint, checkpoint, key),
            every=settings.get("checkpoint_every") or 0,
            minutes=settings.get("checkpoint_minutes") or 0.0,
            restored=restored,
            extra=tracker,
        )
        if restored is not None:
            print(f"trial {key}: continuing from its checkpoint ({ckpt.describe(restored)})")
    score_every = settings["score_every"]
    with checkpointing(checkpointer), metered(schema.parse_budget(settings.get("budget"))) as meter:
        reconstruction = attack.reconstruct(
            observation,
            generator=generator,
            callback=on_progress if score_every else None,
            callback_every=score_every,
            progress=not settings["quiet"],
        )
    return reconstruction, tracker.resumes, meter.evaluations


def _inside_repo(path: Path) -> Path:
    return path if path.is_absolute() else REPO_ROOT / path


def _finish(record: dict[str, Any], path: Path | None, started: float) -> dict[str, Any]:
    record["trial_seconds"] = time.perf_counter() - started
    record["trial_cpu_seconds"] = time.process_time() - record.pop("cpu_started")
    if path is not None:
        rec.write_atomic(path, rec.canonical_json(record) + "\n")
    return record
