"""The runner: ``python -m bench.run`` (a sweep) or ``python -m bench.run sweep=none ...`` (one trial).

data -> client update -> attack -> metrics -> record. Each trial is one Hydra job
and a pure function of its config; its record is keyed by a hash of that config,
so re-running a sweep into the same folder skips what is already done.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import math
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import methods
from bench import records as rec
from bench.client import client_round
from bench.data import ImageDataset, load_dataset
from bench.defence_costs import defence_fields
from bench.defences import defence_from_config, trial_key_part
from bench.errors import InfeasibleBatchError, UserError
from bench.metrics import LPIPSScorer, label_accuracy, match, psnr, score
from bench.models import prepare_model
from bench.sampler import min_feasible_dup_ratio, sample_batch
from bench.system import tune_malloc
from methods.base import NotApplicableError
from methods.labels import infer_labels, list_label_strategies

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = ("attack", "labels")
TRIAL_KEYS = ("dataset", "model", "profile", "batch_size", "dup_ratio", "seed", "labels_known", "client_mode")
MAX_TRACE_POINTS = 500


def derive_seed(seed: int, stream: str) -> int:
    """Independent, reproducible seeds for the separate random streams of one trial."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:7], "little")


def method_params(cfg: DictConfig) -> dict[str, Any]:
    """The method's keyword config: its params, then its profile's, then a top-level ``iterations``."""
    method = cfg.method
    profiles = method.get("profiles") or {}
    if cfg.profile not in profiles:
        raise UserError(
            f"unknown profile {cfg.profile!r} for method {method.name!r}; choose one of {', '.join(profiles)}"
        )
    base = method.get("params")
    params = {
        **(OmegaConf.to_container(base) if base is not None else {}),
        **OmegaConf.to_container(profiles[cfg.profile]),
    }
    if cfg.iterations is not None:
        params["iterations"] = cfg.iterations
    return params


def load_plugins(plugins: list[str]) -> None:
    """Import user modules (dotted names or .py paths) whose ``@register_method`` adds attacks."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"plugin file {path} does not exist; pass plugins=[path/to/my_attack.py]")
            module_name = f"gia_bench_plugin_{path.stem}"
            if module_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as error:
                raise UserError(f"cannot import plugin {plugin!r} ({error}); is it on PYTHONPATH?") from None


def build_attack(cfg: DictConfig) -> methods.Attack:
    load_plugins(list(cfg.plugins))
    name = cfg.method.name
    try:
        cls = methods.get_method_class(name)
    except KeyError as error:
        raise UserError(str(error)) from None
    params = method_params(cfg)
    known = {f.name for f in fields(cls)} if hasattr(cls, "__dataclass_fields__") else set(params)
    unknown = sorted(set(params) - known)
    if unknown:
        raise UserError(
            f"method {name!r} has no option {', '.join(unknown)}; its options are {', '.join(sorted(known))}"
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as error:
        raise UserError(f"bad option for method {name!r}: {error}") from None


def trial_config(cfg: DictConfig) -> dict[str, Any]:
    """What defines a trial, and so its record key: everything that can change its numbers."""
    if cfg.task == "labels":
        keys = ("dataset", "model", "batch_size", "dup_ratio", "seed", "client_mode")
        config = {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
        return {"task": "labels", "label_strategy": cfg.label_strategy, **config, **defence_key(cfg)}
    config = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in TRIAL_KEYS
    }
    config["method"] = {"name": cfg.method.name, **method_params(cfg)}
    return {**config, **defence_key(cfg)}


def defence_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.defence, resolve=True) if cfg.get("defence") else {"name": "none"}


def defence_key(cfg: DictConfig) -> dict[str, Any]:
    """The defence's part of the trial key: nothing for an undefended trial without training cost (keys unchanged)."""
    part = trial_key_part(defence_from_config(defence_config(cfg))[1])
    training = OmegaConf.to_container(cfg.defence_training) if cfg.get("defence_training") else {}
    if training.get("steps"):
        part["defence_training"] = training
    return part


@functools.lru_cache(maxsize=4)
def _dataset(spec_json: str) -> ImageDataset:
    import json

    spec = json.loads(spec_json)
    return load_dataset(spec.pop("name"), **{k: v for k, v in spec.items() if v is not None})


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but CUDA is not available; use device=auto or device=cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    versions = {}
    for package in ("torch", "torchvision", "lpips", "piq", "hydra-core", "gia-bench"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "git_commit": commit, "python": platform.python_version()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _thin(points: list[Any], limit: int = MAX_TRACE_POINTS) -> list[Any]:
    if len(points) <= limit:
        return points
    step = math.ceil(len(points) / limit)
    return points[::step] + ([points[-1]] if (len(points) - 1) % step else [])


def sweep_dir() -> Path:
    hc = HydraConfig.get()
    return Path(hc.sweep.dir if hc.mode.name == "MULTIRUN" else hc.run.dir)


def _check_settings(cfg: DictConfig) -> None:
    """Catch malformed top-level values before any work (Hydra parses `iterations=abc` as a string)."""
    positive = {"iterations": cfg.iterations, "seeds": cfg.seeds}
    for name, value in positive.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{name}={value!r} is not valid; give a positive integer, e.g. {name}=100")
    if isinstance(cfg.score_every, bool) or not isinstance(cfg.score_every, int) or cfg.score_every < 0:
        raise UserError(f"score_every={cfg.score_every!r} is not valid; give an integer >= 0 (0 turns scoring off)")
    if cfg.client_mode not in ("train", "eval"):
        raise UserError(f"client_mode={cfg.client_mode!r} is not valid; use client_mode=train or client_mode=eval")
    if cfg.task not in TASKS:
        raise UserError(f"task={cfg.task!r} is not valid; use one of {', '.join(TASKS)}")
    if cfg.model.state not in ("untrained", "trained"):
        raise UserError(
            f"model.state={cfg.model.state!r} is not valid; use model.state=untrained or model.state=trained"
        )


def _resolve_dup_ratio(cfg: DictConfig, dataset: ImageDataset) -> float:
    """``dup_ratio=least`` asks for the least duplication the dataset allows at this batch size."""
    if cfg.dup_ratio != "least":
        return cfg.dup_ratio
    least = min_feasible_dup_ratio(dataset.labels, dataset.num_classes, cfg.batch_size)
    if least is None:
        raise InfeasibleBatchError(
            f"batch_size={cfg.batch_size} cannot be drawn from {dataset.name} at any dup_ratio; lower batch_size"
        )
    return least


def _draw_round(
    cfg: DictConfig, device: torch.device
) -> tuple[ImageDataset, torch.Tensor, torch.Tensor, Any, float, dict[str, Any]]:
    """data -> client update: the batch, its labels, what the attacker observes and the defence's record fields."""
    dataset = _dataset(rec.canonical_json(OmegaConf.to_container(cfg.dataset, resolve=True)))
    dup_ratio = _resolve_dup_ratio(cfg, dataset)
    indices = sample_batch(dataset.labels, dataset.num_classes, cfg.batch_size, dup_ratio, cfg.seed)
    truth, true_labels = dataset.batch(indices)
    truth, true_labels = truth.to(device), true_labels.to(device)
    model_cfg = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ("name", "state")}
    train_images = train_labels = None
    if cfg.model.state == "trained":
        train_images, train_labels = dataset.batch(torch.arange(min(len(dataset), 5000)))
    model = prepare_model(
        cfg.model.name,
        state=cfg.model.state,
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        seed=cfg.seed,
        train_images=train_images,
        train_labels=train_labels,
        mean=dataset.mean,
        std=dataset.std,
        cache_dir=_inside_repo(Path(cfg.cache_dir)) / "models",
        **model_cfg,
    ).to(device)
    defence, _ = defence_from_config(defence_config(cfg))
    client = client_round(
        model,
        truth,
        true_labels,
        mean=dataset.mean,
        std=dataset.std,
        num_classes=dataset.num_classes,
        mode=cfg.client_mode,
        labels_known=cfg.labels_known,
        defence=defence,
        defence_generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "defence")),
    )
    costs = defence_fields(
        defence_config(cfg),
        client,
        training=OmegaConf.to_container(cfg.defence_training) if cfg.get("defence_training") else {},
        model_name=cfg.model.name,
        model_kwargs=model_cfg,
        dataset=dataset,
        seed=cfg.seed,
        defence_seed=derive_seed(cfg.seed, "defence-training"),
        cache_dir=_inside_repo(Path(cfg.cache_dir)) / "models",
    )
    return dataset, truth, true_labels, client.observation, dup_ratio, costs


def run_trial(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run one trial (or find its finished record) and return its record."""
    _check_settings(cfg)
    if cfg.task == "attack":
        attack = build_attack(cfg)
        name = cfg.method.name
    else:
        name = cfg.label_strategy
        if name not in list_label_strategies():
            raise UserError(f"unknown label strategy {name!r}; available: {', '.join(list_label_strategies())}")
    config = trial_config(cfg)
    key = rec.trial_key(config)
    path = rec.record_path(out_dir, key)
    if path.exists():
        try:
            record = rec.read_record(path)
            record["resumed"] = True
            return record
        except rec.CorruptRecordError as error:
            moved = rec.set_aside(path)
            print(f"warning: {error}; moved it to {moved} and re-running the trial", file=sys.stderr)

    device = pick_device(cfg.device)
    record: dict[str, Any] = {
        "record_version": rec.RECORD_VERSION,
        "key": key,
        "task": cfg.task,
        "method": name,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "model_state": cfg.model.state,
        "profile": cfg.profile,
        "batch_size": cfg.batch_size,
        "dup_ratio": cfg.dup_ratio,
        "seed": cfg.seed,
        "labels_known": cfg.labels_known,
        "config": config,
        "device": _device_name(device),
        **environment(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    started = time.perf_counter()
    record["cpu_started"] = time.process_time()  # popped by _finish: the trial's CPU seconds (threads=1: one core)
    try:
        dataset, truth, true_labels, observation, record["dup_ratio"], costs = _draw_round(cfg, device)
        record.update(costs)
    except InfeasibleBatchError as error:
        if HydraConfig.get().mode.name != "MULTIRUN":
            raise
        return _finish(record | {"status": "skipped", "reason": str(error)}, path, started)
    except NotApplicableError as error:  # e.g. a defence that does not apply to this model
        return _finish(record | {"status": "skipped", "reason": str(error)}, path, started)

    try:
        if cfg.task == "labels":
            outcome = _label_trial(name, observation, true_labels)
        else:
            outcome = _attack_trial(cfg, attack, observation, truth, true_labels, out_dir, key)
    except UserError:
        raise
    except NotApplicableError as error:
        outcome = {"status": "skipped", "reason": str(error)}
    except (torch.OutOfMemoryError, MemoryError) as error:
        outcome = {"status": "failed", "reason": f"out of memory ({error}); lower batch_size or use a smaller model"}
    except Exception as error:  # a failed trial is a result: record it and let the sweep go on
        if cfg.debug:
            traceback.print_exc()
        outcome = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    return _finish(record | outcome, path, started)


def _label_trial(strategy: str, observation: Any, true_labels: torch.Tensor) -> dict[str, Any]:
    started = time.perf_counter()
    predicted = infer_labels(strategy, observation)
    seconds = time.perf_counter() - started
    return {
        "status": "ok",
        "label_accuracy": label_accuracy(predicted.cpu(), true_labels.cpu()),
        "exact_multiset": sorted(predicted.tolist()) == sorted(true_labels.tolist()),
        "attack_seconds": seconds,
        "true_labels": true_labels.tolist(),
        "predicted_labels": predicted.tolist(),
    }


def _attack_trial(
    cfg: DictConfig,
    attack: methods.Attack,
    observation: Any,
    truth: torch.Tensor,
    true_labels: torch.Tensor,
    out_dir: Path,
    key: str,
) -> dict[str, Any]:
    progress: list[list[float]] = []

    def on_progress(iteration: int, seconds: float, images: torch.Tensor) -> None:
        order = match(images, truth)
        progress.append([iteration, seconds, float(psnr(images[order], truth).mean())])

    generator = torch.Generator(device=observation.device).manual_seed(derive_seed(cfg.seed, "attack"))
    result = attack.reconstruct(
        observation,
        generator=generator,
        callback=on_progress if cfg.score_every else None,
        callback_every=cfg.score_every,
        progress=not cfg.quiet,
    )
    if not torch.isfinite(result.images).all():
        raise FloatingPointError("the reconstruction contains NaN or inf")
    scores = score(result.images, truth, result.labels, true_labels, LPIPS)
    trace = result.trace
    _save_images(out_dir, key, truth, result.images[torch.tensor(scores.order)], cfg.grid_images)
    return {
        "status": "ok",
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        "lpips": scores.lpips,
        "label_accuracy": scores.label_accuracy,
        "iterations": trace[-1].iteration if trace else 0,
        "attack_seconds": trace[-1].seconds if trace else 0.0,
        "seconds_per_iteration": trace[-1].seconds / trace[-1].iteration if trace else math.nan,
        "per_image_psnr": scores.per_image_psnr,
        "true_labels": true_labels.tolist(),
        "predicted_labels": result.labels.tolist(),
        "trace": [[p.iteration, p.seconds, p.objective] for p in _thin(trace)],
        "progress": progress,
    }


LPIPS = LPIPSScorer()


def _inside_repo(path: Path) -> Path:
    return path if path.is_absolute() else REPO_ROOT / path


def _finish(record: dict[str, Any], path: Path, started: float) -> dict[str, Any]:
    record["trial_seconds"] = time.perf_counter() - started
    record["trial_cpu_seconds"] = time.process_time() - record.pop("cpu_started")
    rec.write_atomic(path, rec.canonical_json(record) + "\n")
    return record


def _save_images(out_dir: Path, key: str, truth: torch.Tensor, reconstruction: torch.Tensor, columns: int) -> None:
    """A PNG grid for people (truth above, reconstruction below) and unpadded strips for the report's figures."""
    from torchvision.utils import save_image

    k = min(columns, truth.shape[0])
    for folder in ("grids", "strips"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    pair = torch.cat([truth[:k], reconstruction[:k]]).cpu()
    save_image(pair, out_dir / "grids" / f"{key}.png", nrow=k, padding=1, pad_value=1.0)
    save_image(truth[:k].cpu(), out_dir / "strips" / f"{key}-truth.png", nrow=k, padding=0)
    save_image(reconstruction[:k].cpu(), out_dir / "strips" / f"{key}-reconstruction.png", nrow=k, padding=0)


def describe(record: dict[str, Any]) -> str:
    ratio = record["dup_ratio"]
    ratio = f"{ratio:.3g}" if isinstance(ratio, float) else ratio
    head = f"{record['method']} B={record['batch_size']} r={ratio} seed={record['seed']}"
    if record["status"] != "ok":
        return f"{head}: {record['status']} ({record.get('reason', '')})"
    if record.get("task") == "labels":
        return f"{head}: labels {100 * record['label_accuracy']:.0f}%"
    return (
        f"{head}: PSNR {record['psnr']:.2f} dB, SSIM {record['ssim']:.3f}, "
        f"labels {100 * record['label_accuracy']:.0f}%, {record['attack_seconds']:.1f} s"
        + (" (already done)" if record.get("resumed") else "")
    )


def sweep_size() -> int | None:
    """How many trials the configured sweep has (None when it cannot be told, e.g. a -m sweep)."""
    hc = HydraConfig.get()
    params = hc.sweeper.get("params") or {}
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    total = 1
    for override in overrides:
        total *= len(list(override.sweep_iterator())) if override.is_sweep_override() else 1
    return total


@hydra.main(config_path=str(REPO_ROOT / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    tune_malloc()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(int(cfg.threads))
        hc = HydraConfig.get()
        out_dir = sweep_dir()
        record = run_trial(cfg, out_dir)
        position = ""
        if hc.mode.name == "MULTIRUN":
            total = sweep_size()
            done = hc.job.num + 1
            position = f"[{done}/{total}, {total - done} left] " if total else f"[{done}] "
        tqdm.write(position + describe(record))
        return record
    except UserError as error:
        if cfg.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


MIN_FREE_BYTES = 100 * 2**20
# Keys that may change between runs into one results folder without mixing experiments.
RUN_ONLY_KEYS = {
    "seeds",
    "quiet",
    "debug",
    "threads",
    "device",
    "score_every",
    "grid_images",
    "results_root",
    "cache_dir",
    "plugins",
    "hydra",
}


def check_output_dir(out_dir: Path, results_root: Path) -> None:
    """Refuse, before any trial runs, a results folder that escapes the root or cannot be written."""
    if not out_dir.is_absolute():
        resolved, root = (Path.cwd() / out_dir).resolve(), (Path.cwd() / results_root).resolve()
        if not resolved.is_relative_to(root):
            raise UserError(
                f"output folder {out_dir} lies outside results_root={results_root}; use a path inside it "
                "or an absolute path"
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"results folder {out_dir} is not writable ({error.strerror or error}); "
            "choose another hydra.sweep.dir / results_root"
        ) from None
    free = shutil.disk_usage(out_dir).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"only {free / 2**20:.0f} MB free under {out_dir}; free some space or choose another folder")


def swept_keys(config: DictConfig) -> set[str]:
    """Top-level keys a sweep varies, from the sweep file and from command-line sweeps."""
    params = config.hydra.sweeper.get("params") or {}
    keys = {str(k).split(".")[0] for k in params}
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if override.is_sweep_override():
            keys.add(override.key_or_group.split(".")[0].split("/")[0])
    return keys


def check_experiment(out_dir: Path, config: DictConfig) -> None:
    """A results folder holds one experiment: refuse to resume it with a config that would mix two."""
    excluded = RUN_ONLY_KEYS | swept_keys(config)
    fixed = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k not in excluded}
    path = out_dir / "experiment.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text())["fixed"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{path} is unreadable; delete it to re-run this folder as a new experiment") from None
        differing = sorted(k for k in set(previous) | set(fixed) if previous.get(k) != fixed.get(k))
        if differing:
            raise UserError(
                f"{out_dir} holds an experiment with different {', '.join(differing)}; resuming would mix "
                "two experiments: use a new hydra.sweep.dir"
            )
        return
    rec.write_atomic(path, rec.canonical_json({"fixed": fixed}) + "\n")


def _refuse(error: UserError, debug: bool) -> None:
    if debug:
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


class ReportCallback(Callback):
    """Checks the results folder before a run or sweep, and writes the report when it ends."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_output_dir(Path(config.hydra.run.dir), Path(config.results_root))
        except UserError as error:
            _refuse(error, config.debug)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        out_dir = Path(config.hydra.sweep.dir)
        try:
            check_output_dir(out_dir, Path(config.results_root))
            check_experiment(out_dir, config)
        except UserError as error:
            _refuse(error, config.debug)
        ACTIVE_OUTPUT.append(out_dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report(Path(config.hydra.run.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report(Path(config.hydra.sweep.dir))

    @staticmethod
    def _report(out_dir: Path) -> None:
        from bench.report import write_report

        if not (out_dir / "records").is_dir():
            return
        summary = write_report(out_dir)
        print(summary)
        from bench.report_defences import write_defence_report

        write_defence_report(out_dir)  # defences.md and its figures, when the folder holds defended trials
        print(f"results: {out_dir.resolve()}")


GROUPS = ("method", "dataset", "model", "sweep", "defence")
ACTIVE_OUTPUT: list[Path] = []  # the sweep folder in progress, for the resume hint after Ctrl-C


def check_group_choices(argv: list[str]) -> None:
    """Name the valid options for an unknown method/dataset/model/sweep in one line (Hydra's own error is long)."""
    for argument in argv:
        key, _, value = argument.partition("=")
        if key.lstrip("+~") not in GROUPS or not value:
            continue
        options = sorted(p.stem for p in (REPO_ROOT / "conf" / key.lstrip("+~")).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in options:
                noun = key.lstrip("+~")
                hint = " (a method from a plugin: method=external method.name=NAME)" if noun == "method" else ""
                raise UserError(f"unknown {noun} {choice!r}; available: {', '.join(options)}{hint}")


def cli() -> None:
    """``python -m bench.run``: Hydra's entry point with one-line errors and a clean Ctrl-C."""
    try:
        check_group_choices(sys.argv[1:])
    except UserError as error:
        _refuse(error, debug="debug=true" in sys.argv)
    try:
        main()
    except KeyboardInterrupt:
        arguments = sys.argv[1:]
        if ACTIVE_OUTPUT and not any(a.startswith("hydra.sweep.dir=") for a in arguments):
            arguments.append(f"hydra.sweep.dir={ACTIVE_OUTPUT[-1]}")
        resume = " ".join(["python -m bench.run", *arguments])
        print(
            "\ninterrupted: finished records are kept and the unfinished trial was discarded; "
            f"resume with the same command and the same output folder (hydra.sweep.dir=...):\n  {resume}",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    # Call through the importable module, not __main__, so that parallel launchers
    # (joblib, submitit) can pickle the task function by reference.
    from bench.run import cli as importable_cli

    importable_cli()
