"""The report's vocabulary: which record fields are metrics and settings, and how each is labelled."""

from __future__ import annotations

METRICS = ("psnr", "ssim", "lpips", "label_accuracy", "attack_seconds", "seconds_per_iteration")
SUCCESS = "success_rate"  # share of images with PSNR >= the success threshold
ORACLE = "oracle_flat_psnr"  # per trial: the PSNR of a flat image of each true image's own mean colour
# statistics scored per image when the record holds a per-image list: their CI is over images x seeds
PER_IMAGE = {
    "psnr": "per_image_psnr",
    "ssim": "per_image_ssim",
    "lpips": "per_image_lpips",
    ORACLE: "per_image_oracle_flat_psnr",
}
DEFAULT_SUCCESS_PSNR = 20.0
# every statistic a summary row holds, in the order the tables show them
STATISTICS = ("psnr", SUCCESS, ORACLE, "ssim", "lpips", "label_accuracy", "attack_seconds", "seconds_per_iteration")

AXES = (
    "variant",
    "dataset",
    "model",
    "model_state",
    "profile",
    "budget",
    "labels_known",
    "client_mode",
    "composition",
    "batch_size",
    "dup_ratio",
)
GROUP = ("method", *AXES)
ALWAYS = ("method", "batch_size", "dup_ratio")  # grouping columns shown even when they do not vary
TRIAL_COLUMNS = (
    *GROUP,
    "seed",
    "status",
    "reason",
    *METRICS,
    SUCCESS,
    ORACLE,
    "iterations",
    "gradient_evaluations",  # methods.budget: the cost that compares methods (docs/budgets.md)
    "trial_seconds",
    "device",
    "git_commit",
    "created",
    "key",
)
# kept in the trials frame for the statistics, not written to trials.csv
DETAIL_COLUMNS = (*PER_IMAGE.values(), "success_psnr", "progress", "true_labels")
STATUSES = ("ok", "failed", "skipped")
PLOTTED = ("psnr", "ssim", "lpips", "label_accuracy")  # metrics drawn against batch size / duplicate ratio

METRIC_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "label_accuracy": "label accuracy"}  # axes
# label for Markdown, label for LaTeX, decimals (None: three significant digits, for timings that span decades)
METRIC_INFO: dict[str, tuple[str, str, int | None]] = {
    "psnr": ("PSNR (dB)", r"PSNR (dB) $\uparrow$", 2),
    SUCCESS: ("success", r"Success $\uparrow$", 2),
    ORACLE: ("flat-colour PSNR", r"Flat PSNR", 2),
    "ssim": ("SSIM", r"SSIM $\uparrow$", 3),
    "lpips": ("LPIPS", r"LPIPS $\downarrow$", 3),
    "label_accuracy": ("label acc.", r"Label acc.\ $\uparrow$", 3),
    "attack_seconds": ("attack s", r"Time (s)", None),
    "seconds_per_iteration": ("ms/iter", r"ms/iter", None),
}
# the tables show seconds per iteration in milliseconds (readable digits); the CSVs keep seconds
DISPLAY_SCALE = {"seconds_per_iteration": 1000.0}
AXIS_LABELS = {
    "method": ("method", "Method"),
    "variant": ("variant", "Variant"),
    "dataset": ("dataset", "Dataset"),
    "model": ("model", "Model"),
    "model_state": ("model state", "State"),
    "profile": ("profile", "Profile"),
    "budget": ("budget", "Budget"),
    "labels_known": ("labels known", "Labels known"),
    "client_mode": ("client mode", "Client mode"),
    "composition": ("composition", "Composition"),
    "batch_size": ("B", "$B$"),
    "dup_ratio": ("dup. ratio", r"Dup.\ ratio"),
    "seed": ("seed", "Seed"),
}
AXIS_SHORT = {"batch_size": "B", "dup_ratio": "r", "labels_known": "labels known", "model_state": "state"}


def mean_column(statistic: str) -> str:
    """The summary column holding a statistic's mean (the success rate is itself a share: no suffix)."""
    return SUCCESS if statistic == SUCCESS else f"{statistic}_mean"
