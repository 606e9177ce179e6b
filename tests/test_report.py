"""The report: tables, figures, report.md and the comparison, on a real smoke sweep and on edited copies of it."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import report

REPO = Path(__file__).resolve().parents[1]
FIGURES = (
    "psnr_vs_batch_size",
    "ssim_vs_batch_size",
    "label_accuracy_vs_batch_size",
    "attack_time",
    "convergence_seconds",
    "convergence_iterations",
    "reconstructions",
)


@pytest.fixture(scope="module")
def results(smoke_results) -> Path:
    """A real results folder: the smoke sweep (dlg, idlg; B in {1, 2}; one seed), whose runner writes the report."""
    return smoke_results


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
    for metric in report.METRICS:
        table[f"{metric}_mean"], table[f"{metric}_std"] = 1.0, 0.5
    for status in report.STATUSES:
        table[f"n_{status}"] = 1
    assert r"my\_attack & 1 & 0 & 1.00 $\pm$ 0.50" in report.latex_summary(table)


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
    assert len(rows) == 4 and "4 settings in both" in out
    deltas = [cell.strip() for row in rows for cell in row.split("|")[4:9]]
    assert deltas and all(re.fullmatch(r"\+0(\.0+)?", d) for d in deltas), deltas
    assert snapshot(results) == before  # comparing writes nothing


def test_compare_with_modified_copy(results, tmp_path, capsys):
    copy = copy_results(results, tmp_path / "b")
    path, record = next((p, r) for p, r in records(copy).items() if r["method"] == "idlg" and r["batch_size"] == 2)
    record["psnr"] += 1.5
    path.write_text(json.dumps(record) + "\n")
    comparison = report.compare(results, copy)
    delta = comparison.set_index(["method", "batch_size"])["psnr_delta"]
    assert delta[("idlg", 2)] == pytest.approx(1.5) and (delta.drop(("idlg", 2)) == 0).all()
    before_a, before_b = snapshot(results), snapshot(copy)
    assert report.main([str(results), str(copy)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| idlg | 2 |")]
    assert row.split("|")[4].strip() == "+1.50"
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
    for column in ("ssim", "lpips", "progress", "versions", "model_state", "dup_ratio", "iterations", "config"):
        del record[column]
    path.write_text(json.dumps(record) + "\n")
    text = report.write_report(copy)
    assert "| SSIM |" not in text and "| PSNR (dB) |" in text and "no values: SSIM, LPIPS" in text
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
                    record = template | {
                        "key": template["key"] if (method, size, ratio, seed) == ("dlg", 1, 0.0, 0) else key,
                        "method": method,
                        "batch_size": size,
                        "dup_ratio": ratio,
                        "seed": seed,
                        "psnr": "inf" if method == "ig" and size == 1 else rng.uniform(8, 30),
                        "ssim": rng.uniform(0, 1),
                        "lpips": rng.uniform(0, 1),
                        "attack_seconds": seconds,
                        "progress": [[i, seconds * i / 10, rng.uniform(8, 30)] for i in range(1, 11)],
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
