"""The report: tables, figures, report.md and the comparison, on a real smoke sweep and on edited copies of it."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import report

# one worker runs this file, so the module's ``results`` (a report with every figure) is drawn once, not per worker
pytestmark = pytest.mark.xdist_group("report")
REPO = Path(__file__).resolve().parents[1]
FIGURES = (
    "psnr_vs_batch_size",
    "ssim_vs_batch_size",
    "label_accuracy_vs_batch_size",
    "attack_time",
    "convergence_seconds",
    "convergence_iterations",
    "convergence_evaluations",
    "reconstructions",
)


@pytest.fixture(scope="module")
def results(smoke_results, tmp_path_factory) -> Path:
    """A real results folder: a copy of the smoke sweep (dlg, idlg; B in {1, 2}; one seed), with its whole report
    written here (the tests' runs skip the figures: tests/conftest.py)."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    shutil.copytree(smoke_results, out)
    report.write_report(out)
    return out


def records(folder: Path) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))}


def copy_results(results: Path, target: Path) -> Path:
    """A copy without the report's outputs, so each test sees only what it writes itself."""
    shutil.copytree(results, target, ignore=shutil.ignore_patterns("figures", "*.csv", "*.md", "*.tex"))
    return target


def write_record(folder: Path, key: str, record: dict) -> None:
    (folder / "records" / f"{key}.json").write_text(json.dumps(record) + "\n")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_every_file_is_written(results):
    for name in ("trials.csv", "summary.csv", "summary.md", "summary.tex", "report.md"):
        assert (results / name).stat().st_size > 0, name
    for stem in FIGURES:
        png, pdf = results / "figures" / f"{stem}.png", results / "figures" / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert pdf.read_bytes()[:5] == b"%PDF-", stem
    # the smoke sweep has no LPIPS weights (NaN) and one duplicate ratio: those figures would be empty
    if all(r["lpips"] is None for r in records(results).values()):
        assert not (results / "figures" / "lpips_vs_batch_size.png").exists()
    assert not list((results / "figures").glob("*_vs_dup_ratio.*"))


def test_pdf_is_vector_with_truetype_fonts(results):
    data = (results / "figures" / "psnr_vs_batch_size.pdf").read_bytes()
    assert b"/Subtype /Image" not in data  # lines and text, no embedded raster
    assert b"/FontFile2" in data  # pdf.fonttype 42: TrueType, not Type 3


def test_trials_and_summary_tables(results):
    trials = pd.read_csv(results / "trials.csv")
    assert len(trials) == 4 and set(trials.status) == {"ok"}
    assert {"method", "batch_size", "dup_ratio", "seed", "status", "reason", "psnr", "lpips", "key"} <= set(trials)
    summary = pd.read_csv(results / "summary.csv")
    for metric in report.METRICS:
        assert {f"{metric}_mean", f"{metric}_std"} <= set(summary), metric
    assert {"n_ok", "n_failed", "n_skipped"} <= set(summary)
    assert set(summary.method) == {"dlg", "idlg"} and sorted(summary.batch_size.unique()) == [1, 2]
    assert (summary.n_ok == 1).all() and (summary.n_failed == 0).all() and (summary.n_skipped == 0).all()
    by_setting = {(r["method"], r["batch_size"]): r["psnr"] for r in records(results).values()}
    for _, row in summary.iterrows():
        assert row.psnr_mean == pytest.approx(by_setting[(row.method, row.batch_size)])
        assert pd.isna(row.psnr_std)  # one seed: the spread is undefined, not zero
    markdown = (results / "summary.md").read_text()
    assert markdown.startswith("| method |") and "PSNR (dB)" in markdown and markdown.count("| dlg |") == 2


def test_latex_table(results):
    tex = (results / "summary.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert not re.search(r"(?<!\\)_", body)  # every underscore escaped
    table = pd.DataFrame([{"method": "my_attack", "batch_size": 1, "dup_ratio": 0}])
    for metric in report.STATISTICS:
        table[f"{metric}_mean" if metric != "success_rate" else metric] = 1.0
        table[f"{metric}_ci_low"], table[f"{metric}_ci_high"] = 0.5, 1.5
    table["success_rate"], table["success_rate_ci_low"], table["success_rate_ci_high"] = 0.25, 0.1, 0.6
    table["success_psnr"], table["n_images"] = 20.0, 4
    for status in report.STATUSES:
        table[f"n_{status}"] = 1
    tex = report.latex_summary(table)
    assert r"my\_attack & 1 & 0 & 1.00 $\pm$ 0.50 & 0.25 [0.10, 0.60] & 1.00 $\pm$ 0.50" in tex
    assert r"Success $\uparrow$ ($\geq$ 20 dB)" in tex


def test_report_markdown(results):
    text = (results / "report.md").read_text()
    for link in ("summary.csv", "summary.tex", "trials.csv", *(f"figures/{s}.png" for s in FIGURES)):
        assert f"({link})" in text, link
    assert "figures/psnr_vs_batch_size.pdf" in text
    assert "## Failed and skipped trials" in text and "## Environment" in text
    assert "| torch |" in text and "| git commit |" in text
    assert "| dlg | 1 | 0 |" in text  # the summary table is embedded


def test_compare_with_itself_prints_zero_deltas(results, capsys):
    before = snapshot(results)
    assert report.main([str(results), str(results)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| dlg") or line.startswith("| idlg")]
    # one table per metric with values (PSNR, SSIM, label accuracy, attack s, ms/iter), one row per setting
    assert len(rows) == 4 * 5 and "4 settings in both" in out and out.count("### ") == 5
    deltas = [row.split("|")[7].strip() for row in rows]
    assert all(re.fullmatch(r"\+0(\.0+)?", d) for d in deltas), deltas
    assert all(row.split("|")[9].strip() == "n/a" for row in rows)  # no nonzero difference: no Wilcoxon test
    assert snapshot(results) == before  # comparing writes nothing


def test_compare_with_modified_copy(results, tmp_path, capsys):
    copy = copy_results(results, tmp_path / "b")
    path, record = next((p, r) for p, r in records(copy).items() if r["method"] == "idlg" and r["batch_size"] == 2)
    record["psnr"] += 1.5
    record["per_image_psnr"] = [value + 1.5 for value in record["per_image_psnr"]]
    path.write_text(json.dumps(record) + "\n")
    comparison = report.compare(results, copy)
    delta = comparison.set_index(["method", "batch_size"])["psnr_delta"]
    assert delta[("idlg", 2)] == pytest.approx(1.5) and (delta.drop(("idlg", 2)) == 0).all()
    assert comparison.set_index(["method", "batch_size"]).loc[("idlg", 2), "psnr_n"] == 2  # two images paired
    before_a, before_b = snapshot(results), snapshot(copy)
    assert report.main([str(results), str(copy)]) == 0
    out = capsys.readouterr().out.split("### ")[1]  # the PSNR table
    (row,) = [line for line in out.splitlines() if line.startswith("| idlg | 2 |")]
    assert row.split("|")[7].strip() == "+1.50" and row.split("|")[8].strip() == "[+1.50, +1.50]"
    assert snapshot(results) == before_a and snapshot(copy) == before_b


def test_failed_trial_is_counted_and_listed(results, tmp_path):
    copy = copy_results(results, tmp_path / "failed")
    record = next(r for r in records(copy).values() if r["method"] == "dlg" and r["batch_size"] == 2)
    reason = "RuntimeError: the attack diverged (test)"
    failed = {k: v for k, v in record.items() if k not in ("psnr", "ssim", "progress", "trace")}
    write_record(copy, "f" * 16, failed | {"key": "f" * 16, "status": "failed", "reason": reason})
    text = report.write_report(copy)
    summary = pd.read_csv(copy / "summary.csv")
    row = summary[(summary.method == "dlg") & (summary.batch_size == 2)].iloc[0]
    assert row.n_ok == 1 and row.n_failed == 1 and row.psnr_mean == pytest.approx(record["psnr"])
    assert len(pd.read_csv(copy / "trials.csv")) == 5
    markdown = (copy / "report.md").read_text()
    failed_section = markdown.split("## Failed and skipped trials")[1].split("##")[0]
    assert reason in failed_section and "failed" in failed_section and "f" * 16 in failed_section
    assert "| dlg | 2 | 0 |" in text and "| 1 | 1 | 0 |" in text


def test_bad_path_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.report", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "nope" in done.stderr
    assert report.main([str(tmp_path)]) == 2  # a folder, but without records/
    assert report.main([str(tmp_path), str(tmp_path / "nope")]) == 2
    assert not list(tmp_path.iterdir())


def test_one_trial(results, tmp_path):
    copy = copy_results(results, tmp_path / "one")
    for path in sorted((copy / "records").glob("*.json"))[1:]:
        path.unlink()
    text = report.write_report(copy)
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 2  # header and one row
    made = {p.name for p in (copy / "figures").iterdir()}
    # one batch size: no curves against it, but timing, convergence and the reconstruction
    assert {"attack_time.pdf", "convergence_seconds.pdf", "reconstructions.png"} <= made
    assert not any("_vs_" in name for name in made)


def test_ok_record_with_missing_columns(results, tmp_path):
    copy = copy_results(results, tmp_path / "missing")
    for path in sorted((copy / "records").glob("*.json"))[1:]:
        path.unlink()
    ((path, record),) = records(copy).items()
    for column in (
        "ssim",
        "per_image_ssim",
        "lpips",
        "progress",
        "versions",
        "model_state",
        "dup_ratio",
        "iterations",
        "config",
    ):
        del record[column]
    path.write_text(json.dumps(record) + "\n")
    text = report.write_report(copy)
    assert "| SSIM |" not in text and "| PSNR (dB) |" in text
    (note,) = [line for line in text.splitlines() if "Not shown, no values" in line]
    assert "SSIM" in note and "LPIPS" in note
    made = {p.stem for p in (copy / "figures").glob("*.pdf")}
    assert made == {"attack_time", "reconstructions"}  # no progress: no convergence figures
    assert "| torch | unknown |" in (copy / "report.md").read_text()


def test_all_failed_or_skipped_and_missing_columns(results, tmp_path):
    copy = copy_results(results, tmp_path / "bad")
    for i, (path, record) in enumerate(records(copy).items()):
        status = "failed" if i % 2 else "skipped"
        kept = {k: v for k, v in record.items() if k in ("record_version", "key", "method", "batch_size", "seed")}
        path.write_text(json.dumps(kept | {"status": status, "reason": f"reason {i}"}) + "\n")
    text = report.write_report(copy)
    summary = pd.read_csv(copy / "summary.csv")
    assert summary.n_ok.sum() == 0 and summary.n_failed.sum() == 2 and summary.n_skipped.sum() == 2
    assert "| ok | failed | skipped |" in text and "Not shown, no values: PSNR (dB)" in text
    markdown = (copy / "report.md").read_text()
    assert all(f"reason {i}" in markdown for i in range(4)) and "No figures" in markdown
    assert (copy / "summary.tex").read_text().count(r"\\") >= 3


def test_no_records_at_all(tmp_path):
    (tmp_path / "records").mkdir()
    assert "No trials" in report.write_report(tmp_path)
    assert (tmp_path / "report.md").exists() and (tmp_path / "summary.tex").exists()


def test_method_styles_are_fixed_and_deterministic():
    known = report.method_styles(["idlg", "dlg"])
    assert known["dlg"] == report.method_styles(["dlg", "ig", "zzz"])["dlg"]
    assert known["dlg"].colour != known["idlg"].colour and known["dlg"].marker != known["idlg"].marker
    extra = report.method_styles(["b_attack", "a_attack", "dlg"])
    assert extra == report.method_styles(["dlg", "a_attack", "b_attack"])
    colours = [style.colour for style in extra.values()]
    assert len(set(colours)) == 3


def synthetic(results: Path, target: Path, seeds: int = 2) -> Path:
    """A larger sweep from one real record: five methods (one unknown), five batch sizes, three ratios."""
    target.mkdir()
    (target / "records").mkdir()
    shutil.copytree(results / "strips", target / "strips")
    template = next(iter(records(results).values()))
    rng = random.Random(0)
    for method in ("dlg", "idlg", "ig", "gradinversion", "my_attack"):
        for size in (1, 2, 4, 8, 16):
            for ratio in (0.0, 0.5, 1.0):
                for seed in range(seeds):
                    key = f"{method}-{size}-{ratio}-{seed}"
                    seconds = rng.uniform(1, 500)
                    psnr = math.inf if method == "ig" and size == 1 else rng.uniform(8, 30)
                    record = template | {
                        "key": template["key"] if (method, size, ratio, seed) == ("dlg", 1, 0.0, 0) else key,
                        "method": method,
                        "batch_size": size,
                        "dup_ratio": ratio,
                        "seed": seed,
                        "psnr": "inf" if math.isinf(psnr) else psnr,
                        "per_image_psnr": ["inf" if math.isinf(psnr) else psnr] * size,
                        "ssim": rng.uniform(0, 1),
                        "lpips": rng.uniform(0, 1),
                        "attack_seconds": seconds,
                        "progress": [[i, seconds * i / 10, rng.uniform(8, 30), 20 * i] for i in range(1, 11)],
                    }
                    if size == 16 and ratio == 1.0:
                        record = record | {"status": "skipped", "reason": "not enough images of one class"}
                    write_record(target, key, record)
    return target


def test_larger_sweep_draws_every_figure(results, tmp_path):
    folder = synthetic(results, tmp_path / "big", seeds=1)
    report.write_report(folder)
    made = {p.stem for p in (folder / "figures").glob("*.pdf")}
    expected = {f"{m}_vs_{x}" for m in report.PLOTTED for x in ("batch_size", "dup_ratio")}
    assert expected | set(FIGURES) <= made
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 5 * 5 * 3 and summary.n_skipped.sum() == 5
    assert "inf" in (folder / "summary.md").read_text()  # a perfect reconstruction stays visible
    assert "Not drawn" not in (folder / "report.md").read_text()


# ----------------------------------------------------------------------------- statistics, floors, compare, time-to


def minimal_record(method: str, seed: int, per_image: list[float], **fields) -> dict:
    """A hand-made ok record with just what the report reads (no trial behind it)."""
    key = f"{method}-{fields.get('batch_size', len(per_image))}-{seed}-{fields.pop('tag', '')}"
    return {
        "record_version": 1,
        "key": key,
        "task": "attack",
        "status": "ok",
        "method": method,
        "dataset": "crops",
        "model": "convnet",
        "batch_size": len(per_image),
        "dup_ratio": 0,
        "seed": seed,
        "psnr": sum(per_image) / len(per_image),
        "per_image_psnr": per_image,
        "label_accuracy": 1.0,
        "attack_seconds": 1.0,
        "true_labels": list(range(len(per_image))),
    } | fields


def folder_of(path: Path, records: list[dict]) -> Path:
    (path / "records").mkdir(parents=True)
    for record in records:
        write_record(path, record["key"], record)
    return path


def test_bootstrap_ci_against_hand_computed_cases():
    from scipy import stats

    # two values a < b: a resample's mean is a, (a+b)/2 or b with probability 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% points of the bootstrap distribution are a and b exactly
    assert report.bootstrap_ci([3.0, 7.0]) == (3.0, 7.0)
    # 0..399: mean 199.5, sample std sqrt(400 * 401 / 12) = 115.76, standard error 5.788; for a sample this
    # large the bootstrap CI is the normal one, 199.5 ± 1.96 * 5.788 = [188.16, 210.84], to Monte Carlo error
    low, high = report.bootstrap_ci(list(range(400)))
    assert low == pytest.approx(188.16, abs=0.6) and high == pytest.approx(210.84, abs=0.6)
    # it is scipy's BCa bootstrap with a fixed seed: the same numbers as scipy called directly
    data = [12.1, 15.3, 9.8, 20.4, 17.7, 11.0, 14.2]
    direct = stats.bootstrap((np.array(data),), np.mean, method="BCa", rng=np.random.default_rng(0))
    assert report.bootstrap_ci(data) == (direct.confidence_interval.low, direct.confidence_interval.high)
    assert report.bootstrap_ci(data) == report.bootstrap_ci(list(data))  # reproducible
    # degenerate inputs: one value has no interval, equal values a zero-width one, inf none
    assert all(math.isnan(v) for v in report.bootstrap_ci([5.0]))
    assert report.bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert all(math.isnan(v) for v in report.bootstrap_ci([5.0, 6.0, math.inf]))


def test_wilson_interval_is_scipys_without_importing_it():
    from scipy import stats

    from bench.report.stats import wilson_interval

    for n in range(1, 41):
        for k in range(n + 1):
            expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), rel=1e-12, abs=1e-15)


def test_success_rate_and_its_interval_on_known_inputs(tmp_path):
    from bench.report.stats import proportion_interval

    assert report.success_rate([10.0, 20.0, 25.0, 19.99]) == 0.5  # >= 20 dB counts
    assert report.success_rate([10.0, 20.0, 25.0, 19.99], threshold=25.0) == 0.25
    assert report.success_rate([math.nan, 30.0]) == 1.0 and math.isnan(report.success_rate([]))
    # Wilson's interval by hand: k = 1 of n = 4, z = 1.959964
    z, k, n = 1.959964, 1, 4
    centre, half = (k + z**2 / 2) / (n + z**2), z / (n + z**2) * math.sqrt(k * (n - k) / n + z**2 / 4)
    found = proportion_interval([1.0, 0.0, 0.0, 0.0])
    assert found.mean == 0.25
    assert found.low == pytest.approx(centre - half) and found.high == pytest.approx(centre + half)
    assert proportion_interval([0.0, 0.0, 0.0]).high == pytest.approx(z**2 / (3 + z**2))  # not zero width at 0
    # in the summary: images x seeds pooled, the threshold from the records' config, else a CLI override
    records = [
        minimal_record("ig", 0, [25.0, 15.0], config={"success_psnr": 20}),
        minimal_record("ig", 1, [21.0, 19.0], config={"success_psnr": 20}),
    ]
    folder = folder_of(tmp_path / "success", records)
    report.write_report(folder)
    row = pd.read_csv(folder / "summary.csv").iloc[0]
    assert row.success_rate == 0.5 and row.success_psnr == 20 and row.n_images == 4
    assert row.psnr_mean == pytest.approx(20.0) and row.psnr_ci_low < 20.0 < row.psnr_ci_high
    assert "success (≥ 20 dB)" in (folder / "summary.md").read_text()
    assert pd.read_csv(folder / "trials.csv").success_rate.tolist() == [0.5, 0.5]
    assert report.main([str(folder), "--success-psnr", "18"]) == 0
    assert pd.read_csv(folder / "summary.csv").iloc[0].success_rate == 0.75  # 15 dB still fails
    assert report.main([str(folder), "--success-psnr", "x"]) == 2


def test_reference_floors_are_rows_lines_and_a_sentence(tmp_path):
    from bench.report.figures import metric_figure
    from bench.report.styles import figure_style

    records = []
    for size in (1, 2):
        for seed in range(2):
            # the oracle as records may carry it: one number per batch, or one per image
            oracle = {"oracle_flat_psnr": 15.0 + seed if size == 1 else [15.0 + seed] * size}
            records += [
                minimal_record("ig", seed, [18.0 + seed] * size, **oracle),
                minimal_record("noise", seed, [8.0] * size, **oracle),
                minimal_record("mean", seed, [13.0 + seed] * size, **oracle),
            ]
    folder = folder_of(tmp_path / "floors", records)
    text = report.write_report(folder)
    summary = pd.read_csv(folder / "summary.csv")
    assert summary.method.tolist() == ["ig", "mean", "noise"] * 2  # references last in every setting
    assert summary.oracle_flat_psnr_mean.tolist() == [15.5] * 6 and "flat-colour PSNR" in text
    markdown = (folder / "report.md").read_text()
    (sentence,) = [line for line in markdown.splitlines() if line.startswith("**What a method must beat.**")]
    assert "`mean`, 13.50 dB" in sentence and "`noise` 8.00 dB" in sentence and "15.50 dB" in sentence
    assert "2 of 2 attack rows" in sentence
    trials = report.trials_table(folder)
    with figure_style():
        figure = metric_figure(trials[trials.status == "ok"], "batch_size", "psnr", ["batch_size"])
    ax = figure.axes[0]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]  # not the error bars' caps
    dashed = {line.get_label(): line.get_ydata()[0] for line in lines if line.get_linestyle() not in ("-", "None")}
    assert dashed == {"mean": 13.5, "noise": 8.0, "flat colour (oracle)": 15.5}
    assert "ig" in ax.get_legend_handles_labels()[1]


def test_paired_compare_with_wilcoxon(tmp_path):
    from scipy import stats

    base = [[10.0, 12.0, 14.0], [11.0, 13.0, 9.0], [15.0, 16.0, 10.0]]
    shifts = [[0.5, 1.0, 1.5], [2.0, -0.5, 1.0], [0.25, 3.0, 0.75]]
    a = folder_of(tmp_path / "a", [minimal_record("ig", s, base[s]) for s in range(3)])
    b_records = [minimal_record("ig", s, [x + d for x, d in zip(base[s], shifts[s], strict=True)]) for s in range(3)]
    b_records.append(minimal_record("ig", 3, [1.0, 2.0, 3.0]))  # a seed only B holds: not paired
    b = folder_of(tmp_path / "b", b_records)
    (row,) = report.compare(a, b).to_dict("records")
    differences = [d for seed in shifts for d in seed]
    assert row["psnr_n"] == 9 and row["n_paired"] == 3 and row["n_ok_b"] == 4
    assert row["psnr_delta"] == pytest.approx(np.mean(differences))
    assert row["psnr_a"] == pytest.approx(np.mean(base))
    assert row["psnr_ci_low"] < row["psnr_delta"] < row["psnr_ci_high"]
    assert (row["psnr_ci_low"], row["psnr_ci_high"]) == report.bootstrap_ci(differences)
    assert row["psnr_p"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert row["label_accuracy_n"] == 3 and math.isnan(row["label_accuracy_p"])  # per trial; no difference
    # a pair that saw different batches (true labels differ) cannot be paired image by image
    mismatched = minimal_record("ig", 0, base[0]) | {"true_labels": [7, 8, 9]}
    write_record(b, mismatched["key"], mismatched)
    comparison = report.compare(a, b)
    assert comparison.attrs["mismatched"] == 1 and comparison.iloc[0].n_paired == 2
    assert "1 trial pairs left out" in report.markdown_comparison(comparison)


def test_time_to_reference_on_constructed_progress(tmp_path, capsys):
    def progress(*psnrs: float, seconds_per_point: float = 1.0) -> list[list[float]]:
        return [[25 * (i + 1), seconds_per_point * (i + 1), p] for i, p in enumerate(psnrs)]

    records = []
    for seed, (afgi, final) in enumerate([((10, 17, 18.5, 19), 19.0), ((10, 12, 14, 15), 15.0), ((12, 18, 19), 19.0)]):
        records.append(minimal_record("ig", seed, [18.0], attack_seconds=10.0, progress=progress(12, 16, 18)))
        records.append(minimal_record("afgi", seed, [final], attack_seconds=4.0, progress=progress(*afgi)))
        records.append(minimal_record("noise", seed, [8.0]))  # a reference method: not timed
    records.append(minimal_record("afgi", 9, [19.0], progress=progress(19)))  # no ig on seed 9: not paired
    folder = folder_of(tmp_path / "timeto", records)
    (row,) = report.time_to_table(report.trials_table(folder), "ig").to_dict("records")
    # seeds reach 18 dB at the 3rd, never, and the 2nd scored point (1 s apart): 3 s, inf, 2 s of ig's 10 s
    assert row["method"] == "afgi" and row["seeds"] == 3 and row["reached"] == 2
    assert row["reached_seconds"] == 3.0 and row["ratio"] == pytest.approx(0.3)
    assert row["reference_psnr"] == 18.0 and row["reference_seconds"] == 10.0 and row["final_at_least_reference"] == 2
    assert row["score_every"] == 25 and row["scored_seconds"] == 1.0
    assert report.main([str(folder), "--time-to", "ig"]) == 0
    out = capsys.readouterr().out
    assert "| afgi | 1 | 0 | 3 | 18.00 | 10 | 3 | 0.30 | 2/3 | 19.00 | 2/3 | 25, 1 |" in out
    assert "every 25 iterations" in out and "rounded up to the next scored point" in out
    assert (folder / "time_to_ig.md").read_text() in out and len(pd.read_csv(folder / "time_to_ig.csv")) == 1
    assert report.main([str(folder), "--time-to", "dlg"]) == 2  # no such method here: one-line error
    assert "no ok trial of method 'dlg'" in capsys.readouterr().err


def test_a_new_method_gets_a_colour_and_marker_automatically(monkeypatch):
    import methods

    before = report.method_styles(methods.list_methods())
    # a name the registry does not know (a plugin's records) gets a colour no registered method has
    unknown = report.method_styles(["dlg", "brand_new"])["brand_new"]
    assert unknown.colour not in {s.colour for s in before.values()}

    class BrandNew:
        name, paper = "brand_new", "Someone. A New Attack. 2031"

    class Floor:
        name, paper, reference = "floor", "", True

    registry = {n: methods.get_method_class(n) for n in methods.list_methods()}
    registry |= {"brand_new": BrandNew, "floor": Floor}
    monkeypatch.setattr(methods, "list_methods", lambda: sorted(registry))
    monkeypatch.setattr(methods, "get_method_class", registry.__getitem__)
    after = report.method_styles(registry)
    assert {n: after[n] for n in before} == before  # the newest method is appended: no colour moves
    assert after["brand_new"].colour not in {s.colour for s in before.values()} and after["brand_new"].line == "-"
    assert report.is_reference("floor") and after["floor"].line == "--"  # the class attribute marks a reference
    assert report.method_order(["floor", "brand_new", "dlg"]) == ["dlg", "brand_new", "floor"]
