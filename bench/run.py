"""The Hydra shell around ``bench.trial``: ``python -m bench.run`` (a sweep) or ``... sweep=none`` (one trial).

Each trial is one Hydra job. Before any job runs, the command line and every
value a sweep will take are composed and checked against the schema
(``bench.config``), so a bad value is one line and exit code 2, never a
half-finished sweep. The method configs are generated from the method registry,
so a registered attack is a ``method=`` choice and part of every default sweep.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from bench import config as schema
from bench.errors import UserError
from bench.plugins import load_plugins
from bench.provenance import REPO_ROOT
from bench.records import discard_partial_writes
from bench.resume import check_experiment, check_output_dir
from bench.system import tune_malloc
from bench.trial import method_node, run_trial
from methods.base import list_methods
from methods.registry import UnknownNameError

CONF_DIR = REPO_ROOT / "conf"
ACTIVE_OUTPUT: list[Path] = []  # the sweep folder in progress, for the resume hint after Ctrl-C


def register_configs() -> None:
    """Hydra's view of the registries: the schema's defaults as ``settings``, one ``method`` config per attack."""
    store = ConfigStore.instance()
    store.store(name="settings", node=schema.defaults())
    for name in list_methods():
        store.store(group="method", name=name, node=method_node(name))


def register_sweeper() -> None:
    """Make ``conf/config.yaml``'s sweeper known to Hydra from any working directory.

    Hydra finds plugins by scanning ``hydra_plugins`` on sys.path, which misses an editable install run from another
    folder. The scan also re-executes Hydra's own plugin modules, so the subclass is imported after it, on the
    ``BasicSweeper`` that Hydra will use.
    """
    plugins = Plugins.instance()
    from hydra_plugins.gia_bench_sweeper import CheckedSweeper

    plugins.register(CheckedSweeper)


def all_methods() -> str:
    """Every registered attack, for a sweep's ``method: ${all_methods:}``."""
    return ",".join(list_methods())


OmegaConf.register_new_resolver("all_methods", all_methods, replace=True)
register_configs()


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """A composed Hydra config as the plain settings ``bench.trial`` takes."""
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}


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


# How many trials the running sweep has: set by ReportCallback when the sweep starts (its config still holds the
# command line; a job's holds only that job's values), read by each job, inherited by launcher workers.
SWEEP_SIZE_VARIABLE = "GIA_BENCH_SWEEP_SIZE"


def sweep_size(config: DictConfig) -> int:
    """How many trials a sweep has: the sweep file's axes, with command-line values replacing them."""
    params = config.hydra.sweeper.get("params") or {}
    parser = OverridesParser.create()
    axes = {o.key_or_group: o for o in parser.parse_overrides([f"{key}={value}" for key, value in params.items()])}
    axes |= {o.key_or_group: o for o in parser.parse_overrides(list(config.hydra.overrides.task))}
    total = 1
    for override in axes.values():
        total *= len(list(override.sweep_iterator())) if override.is_sweep_override() else 1
    return total


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    if cfg.device in ("cpu", "auto") and not torch.cuda.is_available():
        tune_malloc()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(int(cfg.threads))
        load_plugins(list(cfg.plugins))
        hc = HydraConfig.get()
        multirun = hc.mode.name == "MULTIRUN"
        out_dir = Path(hc.sweep.dir if multirun else hc.run.dir)
        record = run_trial(settings_of(cfg), out_dir, in_sweep=multirun).record
        position = ""
        if multirun:
            total = int(os.environ.get(SWEEP_SIZE_VARIABLE, 0))
            done = hc.job.num + 1
            position = f"[{done}/{total}, {total - done} left] " if total else f"[{done}] "
        tqdm.write(position + describe(record))
        return record
    except (UserError, UnknownNameError) as error:
        if cfg.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def swept_keys(config: DictConfig) -> set[str]:
    """Top-level keys a sweep varies, from the sweep file and from command-line sweeps."""
    params = config.hydra.sweeper.get("params") or {}
    keys = {str(k).split(".")[0] for k in params}
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if override.is_sweep_override():
            keys.add(override.key_or_group.split(".")[0].split("/")[0])
    return keys


def _refuse(error: Exception, debug: bool) -> None:
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
        excluded = schema.RUN_ONLY_KEYS | swept_keys(config)
        fixed = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k not in excluded}
        try:
            check_output_dir(out_dir, Path(config.results_root))
            check_experiment(out_dir, fixed)
        except UserError as error:
            _refuse(error, config.debug)
        discard_partial_writes(out_dir)  # a SIGKILL during a record's write leaves its temporary file
        os.environ[SWEEP_SIZE_VARIABLE] = str(sweep_size(config))
        ACTIVE_OUTPUT.append(out_dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report(Path(config.hydra.run.dir), config.success_psnr, config.figures)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report(Path(config.hydra.sweep.dir), config.success_psnr, config.figures)

    @staticmethod
    def _report(out_dir: Path, success_psnr: float, figures: bool) -> None:
        from bench.report import write_report

        if not (out_dir / "records").is_dir():
            return
        summary = write_report(out_dir, success_psnr=success_psnr, figures=figures)
        print(summary)
        print(f"results: {out_dir.resolve()}")


# --- checking a command line before Hydra runs anything ------------------------------------------------------------


def _as_override(key: str, value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, str) and any(c in value for c in " ,=[]{}()'\"\\:$"):
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        text = str(value)
    return f"{key}={text}"


def _choices(arguments: list[str]) -> dict[str, list[str]]:
    """Each override of ``arguments`` as the list of single overrides it stands for (a sweep: one per value)."""
    parsed = OverridesParser.create().parse_overrides(arguments)
    choices: dict[str, list[str]] = {}
    for argument, override in zip(arguments, parsed, strict=True):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices[key] = [_as_override(key, value) for value in override.sweep_iterator()]
        else:
            choices[override.get_key_element()] = [argument]
    return choices


def translate(error: Exception, arguments: list[str]) -> UserError:
    """Hydra's and OmegaConf's multi-line errors as one line that names the key and what to do."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        noun = group.replace("hydra/", "") or "config"
        options = ", ".join(error.options or [])
        hint = " (a plugin's method: plugins=[my_attack.py] method=NAME)" if noun == "method" else ""
        return UserError(f"unknown {noun} {name!r}; available: {options}{hint}")
    text = str(error)
    if "is not in struct" in text or "Could not override" in text:
        key = text.split("'")[1] if "'" in text else "?"
        if key.startswith("method.params."):
            method = next((a.split("=", 1)[1] for a in arguments if a.startswith("method=")), "idlg")
            return UserError(
                f"method {method!r} has no option {key.removeprefix('method.params.')!r}; "
                f"its options are listed in docs/methods/{method}.md"
            )
        return UserError(f"unknown key {key!r}; check its spelling (a new key needs a '+': +{key}=VALUE)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return UserError(f"bad command line ({first}); see README.md for the keys")


def check_command_line(arguments: list[str]) -> None:
    """Compose the config with every value each swept key will take, and validate each against the schema.

    Values are checked one key at a time (the other keys at their first value), so a sweep of n keys costs
    about the sum, not the product, of their value counts.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="check"):
            given = _choices(arguments)
            first = compose("config", overrides=[values[0] for values in given.values()], return_hydra_config=True)
            params = first.hydra.sweeper.get("params")
            params = OmegaConf.to_container(params, resolve=True) if params is not None else {}
            swept = _choices([f"{k}={v}" for k, v in params.items()]) | given
            base = [values[0] for values in swept.values()]
            combinations = [base] + [
                [*base[:i], value, *base[i + 1 :]] for i, values in enumerate(swept.values()) for value in values[1:]
            ]
            for overrides in combinations:
                cfg = compose("config", overrides=overrides)
                schema.validate(settings_of(cfg))
    except UserError:
        raise
    except UnknownNameError as error:
        raise UserError(str(error)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise translate(error, arguments) from None
    finally:
        GlobalHydra.instance().clear()


def _plugins_argument(arguments: list[str]) -> list[str]:
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key == "plugins" and value:
            parsed = OverridesParser.create().parse_overrides([argument])[0].value()
            return [str(p) for p in (parsed if isinstance(parsed, list) else [parsed])]
    return []


def cli() -> None:
    """``python -m bench.run``: Hydra's entry point with one-line errors and a clean Ctrl-C."""
    arguments = [a for a in sys.argv[1:] if not a.startswith("-")]
    debug = "debug=true" in arguments
    try:
        load_plugins(_plugins_argument(arguments))
        register_configs()
        register_sweeper()
        check_command_line(arguments)
    except (UserError, HydraException) as error:
        _refuse(error if isinstance(error, UserError) else translate(error, arguments), debug)
    try:
        main()
    except KeyboardInterrupt:
        # one Ctrl-C is enough: a second one now would turn the clean exit (130, how to resume) into a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        arguments = sys.argv[1:]
        if ACTIVE_OUTPUT and not any(a.startswith("hydra.sweep.dir=") for a in arguments):
            arguments.append(f"hydra.sweep.dir={ACTIVE_OUTPUT[-1]}")
        resume = " ".join(["python -m bench.run", *arguments])
        print(
            "\ninterrupted: finished records are kept and the unfinished trial continues from its checkpoint, if any; "
            f"resume with the same command and the same output folder (hydra.sweep.dir=...):\n  {resume}",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit, not sys.exit: the status is 130 whatever interpreter shutdown does (the test suite once saw
        # this path print its message and still end as killed by SIGINT); every record is already on disk
        os._exit(130)
    # Everything is written: a Ctrl-C that lands during interpreter shutdown would otherwise end a finished run
    # as "killed by SIGINT" (shutdown restores the default action), with no message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    # Call through the importable module, not __main__, so that parallel launchers
    # (joblib, submitit) can pickle the task function by reference.
    from bench.run import cli as importable_cli

    importable_cli()
