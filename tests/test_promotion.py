"""Promotion by evidence, with real trained models on the real MNIST test split: a model trained on a
twelfth of the data, then two trainings on all of it that differ only in seed.

- the clearly better model takes the alias from the weak one, whose run has no stored predictions (as a
  version registered before evaluate kept them): they are computed by its logged model, and it says so;
- the seed pair is promoted over each other in neither direction;
- the printed counts and p-value are those of the stored predictions, by exact arithmetic;
- the report compares the run with the champion, with images of what it fixes and breaks;
- predictions of another test split are refused by name;
- a new version of the champion's own training run (repackaged) takes the alias without a test.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import client_for, copy_repository, run, run_id_of, set_params

from stages.evaluation.paired import Predictions

pytestmark = pytest.mark.slow

MODEL = "mnist-classifier"
WEAK = {"preprocess": {"val_size": 500, "limit": 5000}, "train": {"model": "mlp", "epochs": 1}}
FULL = {"preprocess": {"val_size": 5000, "limit": None}, "train": {"model": "mlp", "epochs": 2}}
DECISION = re.compile(
    r"version (\d+) fixes (\d+) test images and breaks (\d+) of version (\d+)'s \(p [=<] ([^ ;)]+)"
)


def set_seed(repo: Path, seed: int) -> None:
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(re.sub(r"(?m)^seed: \d+", f"seed: {seed}", text, count=1))


def stored_predictions(repo: Path, run_id: str) -> Path:
    return Path(client_for(repo).download_artifacts(run_id, "evaluation/predictions.npz", str(repo / "dl")))


def exact_p(fixes: int, breaks: int) -> float:
    """The exact McNemar test's two-sided p-value, by hand."""
    n = fixes + breaks
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(min(fixes, breaks) + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Three real trainings, each promoted as the retraining job would: weak (seed 1), then full data with
    seeds 1 and 2. The weak run's stored predictions are removed before the first full run is judged."""
    repo = copy_repository(tmp_path_factory.mktemp("promotion") / "repo")
    set_params(repo, **WEAK)
    set_seed(repo, 1)
    run(["dvc", "repro"], repo)
    weak = run_id_of(repo)
    first = run(["mnist-promote"], repo).stdout
    artifact = next((repo / "mlruns").rglob(f"{weak}/artifacts/evaluation/predictions.npz"))
    weak_predictions = Predictions.load(artifact)
    artifact.unlink()  # as a version registered before evaluate kept its predictions

    set_params(repo, **FULL)
    run(["dvc", "repro"], repo)
    better = run_id_of(repo)
    second = run(["mnist-promote"], repo)

    set_seed(repo, 2)
    run(["dvc", "repro"], repo)
    seed_2 = run_id_of(repo)
    third = run(["mnist-promote"], repo).stdout
    return {
        "repo": repo,
        "runs": (weak, better, seed_2),
        "decisions": (first, second.stdout, third),
        "weak_predictions": weak_predictions,
    }


def test_the_clearly_better_model_is_promoted_through_the_weak_ones_logged_model(trained):
    repo, (_, better, _), decisions = trained["repo"], trained["runs"], trained["decisions"]
    assert decisions[0] == "promoted: version 1 is now the champion: there was no champion yet\n"
    note, decision = decisions[1].splitlines()
    assert note.startswith("version 1 has no test predictions in its run")
    assert "computed them with its logged model on mnist/test (" in note
    found = DECISION.search(decision)
    assert decision.startswith("promoted: ") and decision.endswith("version 2 is now the champion"), decision
    version, fixes, breaks, old, p_value = found.groups()
    assert (version, old) == ("2", "1") and int(fixes) > 5 * int(breaks) and float(p_value) < 1e-6

    # the predictions computed by the weak version's logged model are evaluate's, image for image
    mine = Predictions.load(stored_predictions(repo, better))
    theirs = trained["weak_predictions"]
    assert int(fixes) == int((mine.correct & ~theirs.correct).sum())
    assert int(breaks) == int((~mine.correct & theirs.correct).sum())
    champion = client_for(repo).get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == better
    assert float(champion.tags["promotion.p_value"]) == pytest.approx(float(p_value), rel=0.05)


def test_two_trainings_that_differ_only_in_seed_are_not_promoted_over_each_other(trained):
    repo, (_, seed_1, seed_2), decisions = trained["repo"], trained["runs"], trained["decisions"]
    client = client_for(repo)
    assert decisions[2].startswith("not promoted: version 3 fixes ") and decisions[2].endswith("stays\n")
    version, fixes, breaks, old, p_value = DECISION.search(decisions[2]).groups()
    assert (version, old) == ("3", "2")
    first, second = (Predictions.load(stored_predictions(repo, r)) for r in (seed_1, seed_2))
    assert int(fixes) == int((second.correct & ~first.correct).sum()) > 0
    assert int(breaks) == int((~second.correct & first.correct).sum()) > 0
    assert float(p_value) == pytest.approx(exact_p(int(fixes), int(breaks)), rel=0.05)
    assert float(p_value) > 0.05
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == seed_1

    client.set_registered_model_alias(MODEL, "champion", "3")  # the other way round
    try:
        reverse = run(["mnist-promote", "--run-id", seed_1], repo).stdout
        assert reverse.startswith("not promoted: version 2 fixes ") and reverse.endswith("stays\n"), reverse
        assert DECISION.search(reverse).group(5) == p_value  # the same images decide, so the same p
    finally:
        client.set_registered_model_alias(MODEL, "champion", "2")


def test_the_report_compares_the_run_with_the_champion_image_for_image(trained):
    repo = trained["repo"]
    report = repo / "data" / "report"
    text = (report / "report.md").read_text()
    section = text.split("## Compared with the champion, version 2 (run `", 1)[1].split("\n## ", 1)[0]
    fixes, breaks = map(int, re.search(r"fixes \*\*(\d+)\*\* .* breaks \*\*(\d+)\*\*", section).groups())
    assert fixes > 0 and breaks > 0 and "would not: the `champion` would stay (p " in section
    assert "![fixed](fixed.png)" in section and "![broken](broken.png)" in section
    for png in ("fixed.png", "broken.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"
    assert re.match(r"# mlp on mnist: \d+\.\d\d% test accuracy \(95% CI \d+\.\d\d-\d+\.\d\d%\)", text)
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5  # curves, confusion, mistakes, fixed, broken
    listed = run(["mnist-runs", "-n", "3"], repo).stdout.splitlines()
    assert "test acc (95% CI)" in listed[0]
    assert all(re.search(r"\d\d\.\d\d% \(\d\d\.\d\d-\d\d\.\d\d\)", line) for line in listed[1:])
    metrics = client_for(repo).get_run(run_id_of(repo)).data.metrics
    assert metrics["test_accuracy_ci95_low"] < metrics["test_accuracy"] < metrics["test_accuracy_ci95_high"]


def test_predictions_of_another_test_split_are_refused_by_name(trained, tmp_path):
    repo, (_, champion_run, seed_2) = trained["repo"], trained["runs"]
    stored = Predictions.load(stored_predictions(repo, champion_run))
    other = Predictions(stored.predicted, stored.probability, stored.label, stored.split, "0" * 64)
    path = tmp_path / "predictions.npz"
    other.save(path)
    client = client_for(repo)
    client.log_artifact(champion_run, str(path), "evaluation")  # as if tested before preprocess changed
    try:
        refused = run(["mnist-promote", "--run-id", seed_2], repo, check=False)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "different images (mnist/test " in refused.stderr
        assert "against mnist/test 000000000000..., by content)" in refused.stderr
        assert client.get_model_version_by_alias(MODEL, "champion").run_id == champion_run
    finally:
        stored.save(path)
        client.log_artifact(champion_run, str(path), "evaluation")


def test_a_new_version_of_the_champions_own_run_takes_the_alias(trained):
    """Repackaged (new serving code), the same training registers again: the same weights, no test."""
    repo, (_, champion_run, _) = trained["repo"], trained["runs"]
    client = client_for(repo)
    before = client.get_model_version_by_alias(MODEL, "champion")
    assert before.run_id == champion_run
    again = client.create_model_version(MODEL, before.source, run_id=champion_run)
    try:
        decision = run(["mnist-promote", "--run-id", champion_run], repo).stdout
        assert decision == (
            f"promoted: version {again.version} is version {before.version}'s own training run, packaged "
            f"again: version {again.version} is now the champion\n"
        )
    finally:
        client.set_registered_model_alias(MODEL, "champion", before.version)
        client.delete_model_version(MODEL, again.version)
