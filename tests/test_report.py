"""The sweep report (arb_jax.study.report) on a small results file built by hand.

D and its error are recomputed here from the formula of docs/method.md §5 (eq. 8 and the reference code's
error propagation) in plain numpy, and looked up in summary.md and suppression.csv.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import pytest

from arb_jax.cli import report as report_cli
from arb_jax.study import report
from arb_jax.study import rows as sweep_rows

# (image, class, perc_before, perc_after by method p/lfdr/pi0/z, passed)
IMAGES = [
    ("a/1.png", "a", 60.0, (10.0, 5.0, 20.0, 55.0), True),
    ("a/2.png", "a", 40.0, (0.0, 2.0, 8.0, 35.0), True),
    ("a/3.png", "a", 75.0, (30.0, 12.0, 25.0, 70.0), True),
    ("b/1.png", "b", 55.0, (20.0, 0.0, 15.0, 50.0), True),
    ("b/2.png", "b", 35.0, (5.0, 1.0, 10.0, 30.0), True),
    ("b/3.png", "b", 90.0, (80.0, 85.0, 88.0, 90.0), False),  # fails the mean-z filter
]


def _row(image_id, cls, before, after, passed, n_boot=1, alpha=0.3, beta=0.3):
    row = {c: "0.5" for c in sweep_rows.COLUMNS}
    row.update(
        {
            "image_id": image_id,
            "class": cls,
            "seed": "0",
            "n_boot": str(n_boot),
            "width": "1.0",
            "alpha": repr(alpha),
            "beta": repr(beta),
            "noise": "square",
            "noise_size": "7",
            "roi_row": "3",
            "roi_col": "4",
            "mean_z_roi": "0.2",
            "passed": "1" if passed else "0",
            "perc_before": repr(before),
            "nonzero_before": "100.0",
        }
    )
    for m, v in zip(sweep_rows.METHODS, after, strict=True):
        # B = 2 halves the suppression (after moves half-way back to before)
        v = v if n_boot == 1 else (v + before) / 2
        row.update(
            {
                f"perc_after_{m}": repr(v),
                f"nonzero_after_{m}": repr(v / before * 100),
                f"sens_{m}": repr(1 - v / before),
                f"spec_{m}": repr(0.9 - 0.1 * alpha),
            }
        )
    return row


def _write(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, sweep_rows.COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def _hand_d(before, after):
    """eq. 8 and the reference code's error, by hand."""
    b, a = np.asarray(before, float), np.asarray(after, float)
    n, sb, sa = len(b), b.sum(), a.sum()
    var = n * np.var(a, ddof=1) / sb**2 + (sa / sb**2) ** 2 * n * np.var(b, ddof=1)
    return sa / sb, math.sqrt(var)


@pytest.fixture()
def results(tmp_path) -> Path:
    out = tmp_path / "results"
    out.mkdir()
    rows = [_row(*im) for im in IMAGES]
    rows += [_row(*im, n_boot=2) for im in IMAGES]
    rows += [_row(*im, alpha=0.1, beta=0.2) for im in IMAGES]
    _write(out / "rows.host0.csv", rows[::2])
    _write(out / "rows.host1.csv", rows[1::2])
    return out


def _table(path: Path) -> dict[tuple, dict[str, str]]:
    with open(path, newline="") as f:
        return {(t["n_boot"], t["alpha"], t["class"], t["method"]): t for t in csv.DictReader(f)}


def _summary_cell(text: str, section: str, cls: str, method_index: int) -> str:
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == cls:
            return cells[2 + method_index]
    raise AssertionError(f"no row {cls!r} in section {section!r}")


def test_report_files_and_the_d_values_by_hand(results, tmp_path):
    files = report.make_report(results, tmp_path / "rep")
    assert set(files) == {"summary", "suppression_csv", "fig3", "fig4", "fig5", "figS7", "figS11", "html"}
    import matplotlib.image as mpimg

    for name in ("fig3", "fig4", "fig5", "figS7", "figS11"):
        img = mpimg.imread(files[name])
        assert img.ndim == 3 and min(img.shape[:2]) > 200 and img.std() > 0.01, name
    text = files["summary"].read_text()
    table = _table(files["suppression_csv"])
    kept = [im for im in IMAGES if im[4]]
    checked = 0
    for cls in ("a", "b", "all"):
        sel = [im for im in kept if cls in ("all", im[1])]
        for k, m in enumerate(sweep_rows.METHODS):
            for n_boot in (1, 2):
                after = [im[3][k] if n_boot == 1 else (im[3][k] + im[2]) / 2 for im in sel]
                d, err = _hand_d([im[2] for im in sel], after)
                got = table[(str(n_boot), "0.3", cls, m)]
                assert int(got["n"]) == len(sel)
                assert float(got["D"]) == pytest.approx(d, rel=1e-12)
                assert float(got["err"]) == pytest.approx(err, rel=1e-12)
                section = f"B = {n_boot}, width = 1, α = 0.3, β = 0.3"
                name = "**all**" if cls == "all" else cls
                assert _summary_cell(text, section, name, k) == f"{d:.3f} ± {err:.3f}"
                checked += 1
    assert checked == 3 * 4 * 2
    # the filtered-out image b/3 is not used: class b has n = 2
    assert "| b | 2 |" in text and "| **all** | 5 |" in text
    assert "5 of 6 images pass" in text
    assert "## D over the grid (all classes)" in text


def test_all_includes_filtered_rows(results, tmp_path):
    files = report.make_report(results, tmp_path / "rep", include_filtered=True)
    rows = _table(files["suppression_csv"])
    b = [im for im in IMAGES if im[1] == "b"]
    d, err = _hand_d([im[2] for im in b], [im[3][0] for im in b])
    assert float(rows[("1", "0.3", "b", "p")]["D"]) == pytest.approx(d, rel=1e-12)
    assert int(rows[("1", "0.3", "b", "p")]["n"]) == 3


def test_read_results_merges_hosts_and_drops_duplicates_and_partial_lines(results):
    rows, dups = report.read_results(results)
    assert len(rows) == 18 and dups == 0
    assert rows[0]["passed"] is True and rows[0]["roi_row"] == 3 and rows[0]["n_boot"] == 1
    text = (results / "rows.host1.csv").read_text()
    extra = text.splitlines()[1]
    (results / "rows.extra.csv").write_text(text.splitlines()[0] + "\n" + extra + "\n" + extra[:20])
    rows, dups = report.read_results(results)
    assert len(rows) == 18 and dups == 1
    one, _ = report.read_results(results / "rows.host0.csv")
    assert len(one) == 9


def test_main_point_and_single_image_classes(tmp_path):
    assert report.main_point([(4, 1.0, 0.3, 0.3), (1, 2.0, 0.1, 0.3), (1, 1.0, 0.1, 0.2)]) == (
        1,
        1.0,
        0.1,
        0.2,
    )
    assert report.main_point([(16, 0.5, 0.3, 0.3), (4, 2.0, 0.3, 0.3)]) == (4, 2.0, 0.3, 0.3)
    path = _write(tmp_path / "rows.csv", [_row(*IMAGES[0]), _row(*IMAGES[3]), _row(*IMAGES[4])])
    files = report.make_report(path, tmp_path / "rep")
    text = files["summary"].read_text()
    # one image: D (its own after / before), no error (that needs a sample variance)
    assert f"| a | 1 | {10.0 / 60.0:.3f} (n=1: no error) |" in text
    table = {(t["class"], t["method"]): t for t in report.suppression_table(report.read_results(path)[0])}
    assert table[("a", "p")]["D"] == pytest.approx(10.0 / 60.0) and math.isnan(table[("a", "p")]["err"])
    assert table[("all", "p")]["n"] == 3 and math.isfinite(table[("all", "p")]["err"])
    assert "figS11" not in files  # no B or width to vary


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="results not found"):
        report.make_report(tmp_path / "nope", tmp_path / "rep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no rows\*.csv in"):
        report.make_report(tmp_path / "empty", tmp_path / "rep")
    path = _write(tmp_path / "rows.csv", [_row(*IMAGES[5])])
    with pytest.raises(ValueError, match="none passed the mean-z filter"):
        report.make_report(path, tmp_path / "rep")


def test_cli(results, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true")
    common.add_argument("--debug", action="store_true")
    report_cli.add_parser(parser.add_subparsers(), common)
    args = parser.parse_args(["report", str(results), "--out", str(tmp_path / "r")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "# Suppression factor D" in out and "8 files in" in out and "index.html" in out
    args = parser.parse_args(["report", str(results), "--quiet"])
    assert args.func(args) == 0
    assert (results / "report" / "summary.md").exists()
    assert capsys.readouterr().out == ""


def test_fig_s11_draws_a_panel_only_for_what_the_grid_varies(tmp_path):
    """A grid of B alone gives one panel (no empty width axis); B and the width give two."""
    import matplotlib.image as mpimg

    def table(n_boots, widths):
        return [
            {
                "n_boot": b,
                "width": w,
                "alpha": 0.3,
                "beta": 0.3,
                "class": report.ALL,
                "method": m,
                "n": 5,
                "D": 0.05 * b / w,
                "err": 0.2,
            }
            for b in n_boots
            for w in widths
            for m in ("p", "lfdr")
        ]

    one = report.plot_grid(
        table((1, 4, 16), (1.0,)), (1, 1.0, 0.3, 0.3), tmp_path / "b.png", methods=("p", "lfdr")
    )
    two = report.plot_grid(
        table((1, 4), (0.5, 1.0, 2.0)), (1, 1.0, 0.3, 0.3), tmp_path / "bw.png", methods=("p", "lfdr")
    )
    w1, w2 = mpimg.imread(one).shape[1], mpimg.imread(two).shape[1]
    assert 1.8 < w2 / w1 < 2.2


def test_one_class_emptied_by_the_filter_and_error_bars_cut_at_zero(tmp_path):
    """A class whose only image failed the filter still gets its place in Fig. 4 (with a note);
    the lower error bars never run below D = 0."""
    import matplotlib.image as mpimg

    rows = [_row(*IMAGES[0]), _row(*IMAGES[1]), _row(*IMAGES[5])]  # class b: its one image filtered
    files = report.make_report(_write(tmp_path / "rows.csv", rows), tmp_path / "rep")
    for name in ("fig3", "fig4", "fig5", "figS7"):
        assert mpimg.imread(files[name]).std() > 0.01, name
    assert "1 of 2 images pass" not in files["summary"].read_text()  # 2 of 3 pass
    assert "2 of 3 images pass" in files["summary"].read_text()
    lower, upper = report.error_bars(np.array([0.1, 0.5, 0.0, 0.4]), np.array([0.3, 0.2, np.nan, 0.1]))
    assert lower.tolist() == pytest.approx([0.1, 0.2, 0.0, 0.1])
    assert upper.tolist() == pytest.approx([0.3, 0.2, 0.0, 0.1])
