"""The simulation-study sweep (arb_jax.study.sweep): rows, resuming after a kill, devices, hosts, data.

Model: ``random:test_tiny8`` (a RANDOM-INIT fixture, not a trained model) at 32 x 32 px, on
scikit-image photos written as 48 x 40 PNGs into a class-layout folder. The sweeps that need a
fresh process (kill/resume, 4 CPU devices, hosts) run ``python -m arb_jax sweep`` in
subprocesses that share a persistent JAX compilation cache, so only the first one compiles.
Row values are checked against a plain numpy pixel-level implementation of docs/method.md §5.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from arb_jax.checkpoints import loading
from arb_jax.cli import sweep as sweep_cli
from arb_jax.core import pipeline, regularize
from arb_jax.core.pipeline import ARBResult
from arb_jax.io import images
from arb_jax.study import grid as sweep_grid
from arb_jax.study import rows as sweep_rows
from arb_jax.study import simulate, sources, sweep

ROOT = Path(__file__).resolve().parents[1]
MODEL = "random:test_tiny8"  # random-init fixture: patch 8, 32 x 32 native
PHOTOS = {"astro": ("astronaut", "camera"), "cat": ("chelsea", "coins"), "misc": ("coffee", "rocket")}
GRID = "n_boot=2 alpha=0.1,0.3 beta=0.2,0.3"  # one ARB run (B = 2), two threshold pairs
N_ROWS = 6 * 2  # images x (alpha, beta) pairs


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    sample = images.sample_images()
    for cls, names in PHOTOS.items():
        (root / cls).mkdir()
        for name in names:
            Image.fromarray(sample[name]).resize((48, 40), Image.Resampling.BILINEAR).save(
                root / cls / f"{name}.png"
            )
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("jax_cache")
    out = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    out.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=str(ROOT),
    )
    return out


def _args(photos: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(photos),
        "--model",
        MODEL,
        "--out",
        str(out),
        "--batch",
        "2",
        "--grid",
        GRID,
        "--z-filter",
        "none",
        "--debug",
        *extra,
    ]


def _sweep(env, args, extra_env=None, script=None, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(["-c", script] if script else ["-m", "arb_jax", "sweep"]), *args]
    proc = subprocess.run(
        cmd, env={**env, **(extra_env or {})}, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _rows(path: Path) -> dict[tuple, dict[str, str]]:
    rows = sweep_rows.read_rows(path, drop_partial=False)
    out = {sweep_rows.row_key(r): r for r in rows}
    assert len(out) == len(rows), "duplicate rows"
    return out


@pytest.fixture(scope="module")
def reference(photos, env, tmp_path_factory) -> dict[tuple, dict[str, str]]:
    """An uninterrupted single-device sweep (the process compiles; later ones hit the cache)."""
    out = tmp_path_factory.mktemp("reference")
    _sweep(env, _args(photos, out, "--quiet"))
    rows = _rows(out / "rows.csv")
    assert len(rows) == N_ROWS
    return rows


# ----------------------------------------------------------------------------------- rows


@pytest.mark.slow
def test_rows_have_the_columns_and_one_row_per_image_and_grid_point(reference, photos):
    ids = {f"{c}/{n}.png" for c, names in PHOTOS.items() for n in names}
    keys = set(reference)
    expected = {(i, 0, 2, 1.0, a, b) for i in ids for a, b in ((0.1, 0.2), (0.3, 0.3))}
    assert keys == expected
    for row in reference.values():
        assert tuple(row) == sweep_rows.COLUMNS
        assert row["class"] == row["image_id"].split("/")[0]
        assert row["noise"] == "square" and row["noise_size"] == "7"  # round(32 * 100 / 488)
        assert 0 <= int(row["roi_row"]) <= 32 - 7 and 0 <= int(row["roi_col"]) <= 32 - 7
        assert row["passed"] == "1"  # --z-filter none
        assert float(row["pi0"]) <= 1  # (tiny 4 x 4 maps: Storey's smoother can dip below 0)
        for m in sweep_rows.METHODS:
            assert 0 <= float(row[f"perc_after_{m}"]) <= float(row["perc_before"]) + 1e-4
            assert 0 <= float(row[f"nonzero_after_{m}"]) <= 100


@pytest.mark.slow
def test_thresholds_reuse_one_arb_run(reference):
    """Rows of the same image and (n_boot, width) differ only in the threshold-dependent maps."""
    runs: dict[tuple, list[dict[str, str]]] = {}
    for (image_id, _, nb, w, _, _), row in reference.items():
        runs.setdefault((image_id, nb, w), []).append(row)
    assert len(runs) == 6
    shared = [
        "roi_row",
        "roi_col",
        "mean_z_roi",
        "pi0",
        "perc_before",
        "nonzero_before",
        "srmsd_roi",
        *(f"{s}_{m}" for m in ("pi0", "z") for s in ("perc_after", "nonzero_after", "sens", "spec")),
    ]
    for rows in runs.values():
        lo, hi = sorted(rows, key=lambda r: float(r["alpha"]))
        assert [lo[c] for c in shared] == [hi[c] for c in shared]
        # a larger alpha (beta) keeps more: never less attention left in the ROI
        assert float(hi["perc_after_p"]) >= float(lo["perc_after_p"])
        assert float(hi["sens_p"]) <= float(lo["sens_p"]) + 1e-6
        assert float(hi["spec_lfdr"]) >= float(lo["spec_lfdr"]) - 1e-6
    # the noise (ROI) depends on the image only, not on the run
    for image_id in {k[0] for k in reference}:
        corners = {(r["roi_row"], r["roi_col"]) for k, r in reference.items() if k[0] == image_id}
        assert len(corners) == 1


def _numpy_metrics(attn, z, p, lfdr, pi0, roi, patch, alpha, beta):
    """docs/method.md §5 on pixels, plain numpy: maps nearest-upsampled by the patch size."""
    up = lambda a: np.kron(np.asarray(a, np.float64), np.ones((patch, patch)))  # noqa: E731
    a, z, p, lfdr = up(attn), up(z), up(p), up(lfdr)
    keep_z = z >= 0
    t = np.percentile(p, 100 * (1 - pi0))
    maps = {
        "p": a * keep_z * (p <= alpha),
        "lfdr": a * keep_z * (lfdr <= beta),
        "pi0": a * keep_z * (p <= t),
        "z": a * keep_z,
    }
    out_before = np.sort(a[~roi])

    def perc(m):
        return 100 * np.mean(np.searchsorted(out_before, m[roi], side="left")) / out_before.size

    res = {"perc_before": perc(a), "nonzero_before": 100 * np.mean(a[roi] != 0), "mean_z_roi": z[roi].mean()}
    for k, m in maps.items():
        res[f"perc_after_{k}"] = perc(m)
        res[f"nonzero_after_{k}"] = 100 * np.mean(m[roi] != 0)
        res[f"sens_{k}"] = 1 - m[roi].sum() / a[roi].sum()
        res[f"spec_{k}"] = m[~roi].sum() / a[~roi].sum()
    ps = np.sort(p[roi])
    u = (np.arange(1, ps.size + 1) - 0.5) / ps.size
    rmsd = np.sqrt(np.mean((u - ps) ** 2))
    res["srmsd_roi"] = -rmsd if np.median(ps) > 0.5 else rmsd
    return res


@pytest.mark.slow
def test_row_values_match_an_independent_numpy_computation(reference, photos):
    """The first batch (2 images): redo noise + ARB by hand, score with numpy."""
    vit = loading.load_vit(MODEL, image_size=32)
    ids = [item.image_id for item in sources.folder_items(photos)][:2]
    assert ids == ["astro/astronaut.png", "cat/chelsea.png"]  # classes in turn
    xs, rois, arb_keys = [], [], []
    for image_id in ids:
        key = jax.random.fold_in(jax.random.key(0), zlib.crc32(image_id.encode()))
        k_arb, k_noise = jax.random.split(key)
        x = images.prepare(images.read_image(photos / image_id)[0], (32, 32), 8)
        noisy, roi = simulate.square_noise(k_noise, x, 7)
        xs.append(noisy)
        rois.append(np.asarray(roi))
        arb_keys.append(k_arb)
    res = pipeline.regularize_attention(vit, jnp.stack(xs), jnp.stack(arb_keys), n_boot=2)
    checked = 0
    for i, image_id in enumerate(ids):
        rr, cc = np.nonzero(rois[i])
        for alpha, beta in ((0.1, 0.2), (0.3, 0.3)):
            row = reference[(image_id, 0, 2, 1.0, alpha, beta)]
            assert (int(row["roi_row"]), int(row["roi_col"])) == (rr.min(), cc.min())
            assert float(row["pi0"]) == pytest.approx(float(res.pi0[i]), abs=1e-6)
            want = _numpy_metrics(
                res.attn[i], res.z[i], res.p[i], res.lfdr[i], float(res.pi0[i]), rois[i], 8, alpha, beta
            )
            for col, value in want.items():
                assert float(row[col]) == pytest.approx(value, rel=1e-5, abs=1e-4), col
                checked += 1
    assert checked == 2 * 2 * 20


# ----------------------------------------------------------------------------------- resume

SLOW = textwrap.dedent("""
    import sys, time
    from arb_jax.cli import main
    from arb_jax.study import sweep
    _batch = sweep.sweep_batch
    def slow_batch(*args, **kwargs):  # a slow device: half a second per batch
        rows = _batch(*args, **kwargs)
        time.sleep(0.5)
        return rows
    sweep.sweep_batch = slow_batch
    sys.exit(main(["sweep", *sys.argv[1:]]))
""")


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_or_repeating_rows(reference, photos, env, tmp_path):
    out = tmp_path / "killed"
    rows_csv = out / "rows.csv"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW, *_args(photos, out, "--quiet")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if rows_csv.exists() and rows_csv.read_bytes().count(b"\n") >= 2:  # header + a row
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    partial = sweep_rows.read_rows(rows_csv)
    assert 0 < len(partial) < N_ROWS
    # simulate a kill inside a write as well: a cut-off last line
    with open(rows_csv, "a") as f:
        f.write("misc/rocket.png,misc,0,2,1.0,0.")  # (rocket is in the last batch)
    done = _sweep(env, _args(photos, out))
    assert f"({len(partial)} already there" in done.stdout
    assert "dropped a partial last line" in done.stdout
    resumed = _rows(rows_csv)
    assert resumed == reference  # same keys, every value bit-identical


def test_row_writer_resumes_a_file_cut_inside_a_line(tmp_path):
    path = tmp_path / "rows.csv"
    row = {c: "x" for c in sweep_rows.COLUMNS} | {
        "image_id": "a/b.png",
        "seed": 0,
        "n_boot": 1,
        "width": 1.0,
        "alpha": 0.3,
        "beta": 0.3,
    }
    with sweep_rows.RowWriter(path) as w:
        assert w.done == set()
        w.write([row, row | {"image_id": "a/c.png"}])
    text = path.read_text()
    assert text.count("\n") == 3
    path.write_text(text + "a/d.png,a,0,1,1")  # killed mid-write
    with sweep_rows.RowWriter(path) as w:
        assert w.done == {("a/b.png", 0, 1, 1.0, 0.3, 0.3), ("a/c.png", 0, 1, 1.0, 0.3, 0.3)}
        assert w.dropped == len("a/d.png,a,0,1,1")
        w.write([row | {"image_id": "a/d.png"}])
    rows = sweep_rows.read_rows(path, drop_partial=False)
    assert [r["image_id"] for r in rows] == ["a/b.png", "a/c.png", "a/d.png"]
    # a complete last line with missing fields (cut at a newline inside a field) is dropped too
    path.write_text(path.read_text() + "a/e.png,a,0\n")
    with sweep_rows.RowWriter(path) as w:
        assert len(w.done) == 3
    assert path.read_text().count("\n") == 4
    # a header cut short: the file is started again
    path.write_text("image_id,cla")
    with sweep_rows.RowWriter(path) as w:
        assert w.done == set()
    assert path.read_text() == ",".join(sweep_rows.COLUMNS) + "\n"


def test_row_writer_refuses_a_foreign_csv(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="does not have the columns"):
        sweep_rows.RowWriter(path)
    path.write_text(",".join(sweep_rows.COLUMNS) + "\n" + "1,2\n" + ",".join("x" * 33) + "\n")
    with pytest.raises(ValueError, match=r"rows.csv:2: 2 fields"):
        sweep_rows.read_rows(path)


# ----------------------------------------------------------------------------------- devices

FOUR_DEVICES = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from arb_jax.checkpoints import loading
    from arb_jax.cli import main
    from arb_jax.core import pipeline
    assert jax.local_device_count() == 4, jax.devices()
    assert main(["sweep", *sys.argv[1:]]) == 0
    # the ARBResult of 8 images sharded over 4 devices (2 each) against one device, 2 at a time
    vit = loading.load_vit("random:test_tiny8", image_size=32)
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    keys = jax.random.split(jax.random.key(2), 8)
    four = pipeline.regularize_attention(vit, x, keys, n_boot=2).to_numpy()
    one_mesh = pipeline.image_mesh(jax.local_devices()[:1])
    parts = [pipeline.regularize_attention(vit, x[i:i + 2], keys[i:i + 2], n_boot=2,
                                           mesh=one_mesh).to_numpy() for i in range(0, 8, 2)]
    for k, v in four.items():
        one = np.concatenate([p[k] for p in parts]) if v.ndim else v
        assert v.shape == one.shape and np.array_equal(v, one), k
    print("ARRAYS-EQUAL", sorted(four))
""")


@pytest.mark.slow
def test_four_cpu_devices_give_the_same_rows_and_arrays(reference, photos, env, tmp_path):
    out = tmp_path / "four"
    four = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = _sweep(env, _args(photos, out, "--quiet"), extra_env=four, script=FOUR_DEVICES)
    assert "ARRAYS-EQUAL" in proc.stdout
    # --batch 2 per device: 8 images per step on 4 devices, bit-identical rows
    assert _rows(out / "rows.csv") == reference


def _free_slurm_port() -> int:
    """A free TCP port in the range jax's SLURM cluster derives from SLURM_JOB_ID."""
    import random
    import socket

    for port in random.Random(os.getpid()).sample(range(65535 - 2**12 + 1, 65536), 50):
        with socket.socket() as sock:
            try:
                sock.bind(("localhost", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.mark.slow
def test_distributed_hosts_write_their_shares(reference, photos, env, tmp_path):
    """``--distributed`` under a (simulated) 2-task SLURM job on this machine: jax.distributed
    connects the two processes; host k writes rows.host{k}.csv with ids[k::2]."""
    out = tmp_path / "dist"
    port = _free_slurm_port()
    procs = []
    for k in range(2):
        slurm = {
            "SLURM_JOB_ID": str(port - (65535 - 2**12 + 1)),
            "SLURM_NTASKS": "2",
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_PROCID": str(k),
            "SLURM_LOCALID": str(k),
        }
        args = _args(photos, out, "--quiet", "--distributed")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "arb_jax", "sweep", *args],
                env={**env, **slurm},
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
    ids = [item.image_id for item in sources.folder_items(photos)]
    merged = {}
    for k in range(2):
        rows = _rows(out / f"rows.host{k}.csv")
        assert {key[0] for key in rows} == set(ids[k::2])
        merged.update(rows)
    assert merged == reference


# ----------------------------------------------------------------------------------- orchestration


def _fake_regularize(calls):
    """Stands in for the pipeline: a cheap deterministic ARBResult; records (n_boot, width)."""

    def fake(vit, x, keys, n_boot=1, sampler="normal", *, mesh=None, **opts):
        calls.append((n_boot, opts["width"], x.shape[0]))
        h = x.shape[1] // vit.config.patch
        pooled = x.reshape(x.shape[0], h, vit.config.patch, h, vit.config.patch, 3).mean((2, 4, 5))
        attn = jax.nn.softmax(pooled.reshape(x.shape[0], -1) * n_boot).reshape(pooled.shape)
        z = (pooled - pooled.mean((1, 2), keepdims=True)) / opts["width"]
        p = jax.nn.sigmoid(-z)
        lfdr = jnp.clip(2 * p, 0, 1)
        pi0 = jnp.full(x.shape[0], 0.8)
        maps = regularize.shrink_all(attn, z, p, lfdr, pi0, map_ndim=2)
        zero = jnp.zeros(x.shape[0])
        return ARBResult(
            attn=attn,
            z=z,
            p=p,
            lfdr=lfdr,
            pi0=pi0,
            mu0=zero,
            sigma0=zero + 1,
            maps=maps,
            options=pipeline.ARBOptions(n_boot=n_boot, **opts),
        )

    return fake


@pytest.mark.slow
def test_grid_runs_arb_once_per_n_boot_and_width_and_skips_done_work(photos, tmp_path, monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(pipeline, "regularize_attention", _fake_regularize(calls))
    grid = sweep_grid.parse_grid("n_boot=1,4 width=0.5,2 alpha=0.05:0.3:3 beta=0.2")
    cfg = sweep.SweepConfig(
        data=str(photos), model=MODEL, out=str(tmp_path / "r"), grid=grid, batch=4, limit=5, z_filter=0.5
    )
    first = sweep.run_sweep(cfg, log=lambda s: None)
    assert (first.written, first.skipped, first.failed, first.images) == (5 * 4 * 3, 0, 0, 5)
    # 2 batches (4 + 1 padded to 4) x 4 runs; thresholds never trigger a run
    assert calls == [(nb, w, 4) for _ in range(2) for nb in (1, 4) for w in (0.5, 2.0)]
    rows = sweep_rows.read_rows(tmp_path / "r" / "rows.csv")
    assert sorted({float(r["alpha"]) for r in rows}) == [0.05, 0.175, 0.3]
    assert {r["passed"] for r in rows} == {"0", "1"}  # the filter flags, it does not drop
    for r in rows:
        assert (r["passed"] == "1") == (abs(float(r["mean_z_roi"])) <= 0.5)
    calls.clear()
    again = sweep.run_sweep(cfg, log=lambda s: None)
    assert (again.written, again.skipped) == (0, 60) and calls == []
    # a larger limit and one more width: only the new work runs
    wider = sweep_grid.parse_grid("n_boot=1,4 width=0.5,2,1 alpha=0.05:0.3:3 beta=0.2")
    import dataclasses

    more = sweep.run_sweep(dataclasses.replace(cfg, grid=wider, limit=None), log=lambda s: None)
    assert more.written == 6 * 6 * 3 - 60
    assert len(sweep_rows.read_rows(tmp_path / "r" / "rows.csv")) == 6 * 6 * 3


@pytest.mark.slow
def test_sweep_refuses_to_mix_settings_in_one_folder(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "regularize_attention", _fake_regularize([]))
    cfg = sweep.SweepConfig(data=str(photos), model=MODEL, out=str(tmp_path), limit=2)
    sweep.run_sweep(cfg, log=lambda s: None)
    import dataclasses

    with pytest.raises(ValueError, match=r"other settings \(noise: 'square' there, 'diffuse' now"):
        sweep.run_sweep(dataclasses.replace(cfg, noise="diffuse"), log=lambda s: None)


@pytest.mark.slow
def test_hosts_take_interleaved_shares_and_report_merges_them(photos, tmp_path, monkeypatch):
    from arb_jax.study import report

    monkeypatch.setattr(pipeline, "regularize_attention", _fake_regularize([]))
    grid = sweep_grid.parse_grid("n_boot=1,2 alpha=0.1,0.3")
    one = sweep.SweepConfig(data=str(photos), model=MODEL, out=str(tmp_path / "one"), grid=grid, batch=2)
    sweep.run_sweep(one, log=lambda s: None)
    import dataclasses

    for k in range(2):
        host = dataclasses.replace(one, out=str(tmp_path / "two"), host=k, n_hosts=2)
        summary = sweep.run_sweep(host, log=lambda s: None)
        assert summary.rows_path.name == f"rows.host{k}.csv" and summary.images == 3
    ids = [item.image_id for item in sources.folder_items(photos)]
    for k in range(2):
        rows = _rows(tmp_path / "two" / f"rows.host{k}.csv")
        assert {key[0] for key in rows} == set(ids[k::2])
    merged, dups = report.read_results(tmp_path / "two")
    ref_rows, _ = report.read_results(tmp_path / "one")
    assert dups == 0 and len(merged) == len(ref_rows) == 6 * 2 * 2
    key = lambda r: (r["image_id"], r["n_boot"], r["alpha"])  # noqa: E731
    assert sorted(merged, key=key) == sorted(ref_rows, key=key)


@pytest.mark.slow
def test_diffuse_noise_rows_and_bad_images(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "regularize_attention", _fake_regularize([]))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png"):
        (data / name).write_bytes((photos / "cat" / "chelsea.png").read_bytes())
    (data / "broken.png").write_bytes(b"not an image")
    logged: list[str] = []
    cfg = sweep.SweepConfig(
        data=str(data), model=MODEL, out=str(tmp_path / "r"), noise="diffuse", noise_size=10, z_filter=None
    )
    summary = sweep.run_sweep(cfg, log=logged.append)
    assert summary.failed == 1 and summary.written == 2
    assert any("broken.png" in s and "not a recognised image" in s for s in logged)
    rows = sweep_rows.read_rows(tmp_path / "r" / "rows.csv")
    assert [(r["image_id"], r["class"], r["roi_row"], r["noise_size"]) for r in rows] == [
        ("a.png", "", "", "10"),
        ("b.png", "", "", "10"),
    ]
    # same pixels, different ids: different noise
    assert rows[0]["mean_z_roi"] != rows[1]["mean_z_roi"]


# ----------------------------------------------------------------------------------- pieces


def test_image_key_depends_on_seed_and_id_only():
    k = sweep_grid.image_key(3, "cat/x.png")
    want = jax.random.fold_in(jax.random.key(3), zlib.crc32(b"cat/x.png"))
    assert np.array_equal(jax.random.key_data(k), jax.random.key_data(want))
    other = [sweep_grid.image_key(3, "cat/y.png"), sweep_grid.image_key(4, "cat/x.png")]
    assert all(not np.array_equal(jax.random.key_data(k), jax.random.key_data(o)) for o in other)


def test_parse_grid():
    g = sweep_grid.parse_grid("n_boot=1,4,16 width=0.5,1,2", alpha=0.1)
    assert g.runs == [(nb, w) for nb in (1, 4, 16) for w in (0.5, 1.0, 2.0)]
    assert g.thresholds == [(0.1, 0.3)]
    g = sweep_grid.parse_grid("alpha=0:1:5; beta=0.3")
    assert g.thresholds == [(a, 0.3) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert len(g.points()) == 5
    assert sweep_grid.parse_grid(None).points() == [(1, 1.0, 0.3, 0.3)]
    for bad, msg in (
        ("nboot=1", "bad --grid entry"),
        ("n_boot=1.5", "integers"),
        ("alpha=1,2", r"alpha must lie in \[0, 1\]"),
        ("width=0", "positive"),
        ("alpha=0.1,0.2 beta=0.1,0.2,0.3", "paired"),
        ("alpha=x", "bad value"),
        ("alpha=0:1", "bad value"),
        ("n_boot=1 n_boot=2", "twice"),
    ):
        with pytest.raises(ValueError, match=msg):
            sweep_grid.parse_grid(bad)
    with pytest.raises(ValueError, match="both on its own and in --grid"):
        sweep_grid.parse_grid("n_boot=1,2", n_boot=4)


def test_folder_items_layouts_and_errors(photos, tmp_path):
    items = sources.folder_items(photos)
    assert [i.image_id for i in items] == [
        "astro/astronaut.png",
        "cat/chelsea.png",
        "misc/coffee.png",
        "astro/camera.png",
        "cat/coins.png",
        "misc/rocket.png",
    ]
    assert [i.label for i in items] == ["astro", "cat", "misc"] * 2
    img = items[1].load()
    assert img.shape == (40, 48, 3) and img.dtype == np.uint8
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "b.png").write_bytes((photos / "cat" / "coins.png").read_bytes())
    (flat / "a.PNG").write_bytes((photos / "cat" / "coins.png").read_bytes())
    (flat / "notes.txt").write_text("not an image")
    assert [(i.image_id, i.label) for i in sources.folder_items(flat)] == [("a.PNG", ""), ("b.png", "")]
    assert [i.image_id for i in sources.open_source(photos, limit=2)] == [
        "astro/astronaut.png",
        "cat/chelsea.png",
    ]
    with pytest.raises(sources.SourceError, match="data folder not found"):
        sources.folder_items(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceError, match="no image files"):
        sources.folder_items(tmp_path / "empty")


def test_tfds_source():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        with pytest.raises(sources.SourceError) as err:
            next(sources.open_source("tfds:imagenette/320px-v2:validation"))
        assert "pip install 'arb-jax[tfds]'" in str(err.value)
        assert "tensorflow-datasets" in str(err.value)
        with pytest.raises(sources.SourceError, match="expected tfds:NAME"):
            next(sources.open_source("tfds:"))
        return
    with tfds.testing.mock_data(num_examples=5):
        items = list(sources.open_source("tfds:imagenette:validation", limit=3))
    assert len(items) == 3 and len({i.image_id for i in items}) == 3
    for item in items:
        img = item.load()
        assert img.ndim == 3 and img.shape[-1] == 3 and img.dtype == np.uint8
        assert isinstance(item.label, str) and item.label


def test_cli_options_and_errors(photos, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true")
    common.add_argument("--debug", action="store_true")
    sweep_cli.add_parser(parser.add_subparsers(), common)
    args = parser.parse_args(
        [
            "sweep",
            str(photos),
            "--out",
            str(tmp_path),
            "--z-filter",
            "none",
            "--host",
            "1/3",
            "--p",
            "0.2",
            "--grid",
            "n_boot=1,2",
        ]
    )
    cfg = sweep_cli.config_from_args(args)
    assert (cfg.z_filter, cfg.host, cfg.n_hosts, cfg.model) == (None, 1, 3, "demo")
    assert cfg.grid.points() == [(1, 1.0, 0.2, 0.3), (2, 1.0, 0.2, 0.3)]
    for bad in (["--z-filter", "-1"], ["--host", "3/3"], ["--noise", "blob"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["sweep", str(photos), "--out", str(tmp_path), *bad])
    assert "unrecognized" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive integer"):
        sweep.SweepConfig(data=str(photos), batch=0)
    with pytest.raises(ValueError, match="unknown noise"):
        sweep.SweepConfig(data=str(photos), noise="blob")
    # errors from python -m arb_jax sweep are one line
    proc = subprocess.run(
        [sys.executable, "-m", "arb_jax", "sweep", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"arb: error: data folder not found: {tmp_path / 'missing'}"]


# ----------------------------------------------------------------------------------- demo model


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT / "arb_jax" / "assets" / "demo_vit.msgpack").exists(),
    reason="the demo ViT (arb_jax/assets/demo_vit.msgpack) is not trained yet",
)
def test_demo_model_suppresses_square_noise_for_every_method(tmp_path, env):
    """The paper's main study in miniature: B = 1, 20 px squares at 96 px, mean-z filter on."""
    from arb_jax.study import report

    data = tmp_path / "photos"
    sample = images.sample_images()
    for name in images.SAMPLE_NAMES:
        (data / name).mkdir(parents=True)
        Image.fromarray(sample[name]).resize((96, 96), Image.Resampling.BICUBIC).save(
            data / name / f"{name}.png"
        )
    out = tmp_path / "demo"
    _sweep(env, [str(data), "--model", "demo", "--out", str(out), "--seed", "0", "--quiet", "--debug"])
    rows, _ = report.read_results(out)
    assert len(rows) == 9 and rows[0]["noise_size"] == 20
    kept = [r for r in rows if r["passed"]]
    table = {t["method"]: t for t in report.suppression_table(kept) if t["class"] == "all"}
    print({m: (round(t["D"], 3), round(t["err"], 3), t["n"]) for m, t in table.items()})
    for m in sweep_rows.METHODS:
        assert table[m]["n"] >= 2
        assert table[m]["D"] < 1, (m, table[m])
