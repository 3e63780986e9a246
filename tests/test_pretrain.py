"""Galaxy-Zoo-style votes and the rotation-invariant pretraining stage."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from clumpfinder.detection.detector import BackboneSpec
from clumpfinder.data.morphology import (
    HOST_COLUMNS,
    QUESTIONS,
    VoteSpec,
    read_vote_catalogue,
    simulate_votes,
    vote_columns,
)
from clumpfinder.detection.pretrain import (
    CLUMPY_QUESTIONS,
    GroupPooledClassifier,
    PretrainSpec,
    clumpy_labels,
    detection_overlap,
    dihedral_view,
    morphology_pool,
    pretrain_encoder,
    pretraining_pool,
    question_slices,
    vote_loss,
)
from clumpfinder.data.volunteers import APPEARANCE_COLUMNS, CrowdSpec

CPU = torch.device("cpu")  # resumes are bit-exact on the CPU
SPEC = VoteSpec(seed=3, votes_per_galaxy=40, min_votes=10, random_answer_fraction=0.1, disagreement=0.5)


@pytest.fixture(scope="module")
def crowd(tiny_config):
    return CrowdSpec.from_config(tiny_config["volunteers"])


@pytest.fixture(scope="module")
def votes(tiny_survey, crowd):
    return simulate_votes(tiny_survey["manifest"], tiny_survey["truth"], SPEC, crowd)


def test_votes_follow_the_tree(votes, tiny_survey):
    assert list(votes.columns) == ["subject_id"] + vote_columns()
    assert len(votes) == len(tiny_survey["manifest"])
    first = votes[["smooth_or_featured_smooth", "smooth_or_featured_featured"]].sum(axis=1)
    assert (first >= SPEC.min_votes).all()
    for q, (answers, parent) in QUESTIONS.items():
        asked = votes[[f"{q}_{a}" for a in answers]].sum(axis=1)
        expected = first if parent is None else votes[f"{parent[0]}_{parent[1]}"]
        assert (asked == expected).all(), q


def _looks(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Hosts with random shapes; half of them with three bright blue knots, a third with a red star."""
    manifest = pd.DataFrame({"subject_id": np.arange(n), "bulge_to_total": rng.uniform(0, 0.4, n),
                             "inclination_deg": rng.uniform(0, 70, n), "mag_r": rng.uniform(15, 17.7, n),
                             "n_arms": rng.choice([0, 2], n), "arm_light_fraction": rng.uniform(0.15, 0.4, n)})
    manifest.loc[manifest["n_arms"] == 0, "arm_light_fraction"] = 0.0
    blue, red = rng.random(n) < 0.5, rng.random(n) < 0.33
    rows = [{"subject_id": i, "x": 40.0 + k, "y": 50.0, "contrast_g": 4.0, "contrast_r": 2.0, "snr_g": 30.0,
             "colour_gr": 0.1} for i in np.flatnonzero(blue) for k in range(3)]
    rows += [{"subject_id": i, "x": 20.0, "y": 20.0, "contrast_g": 3.0, "contrast_r": 6.0, "snr_g": 40.0,
              "colour_gr": 1.2} for i in np.flatnonzero(red)]
    return manifest, pd.DataFrame(rows), blue, red


def test_votes_carry_what_volunteers_see(crowd):
    """With many galaxies the vote fractions track the hosts' look and what there is to notice."""
    manifest, objects, blue, red = _looks(600, np.random.default_rng(0))
    v = simulate_votes(manifest, objects, SPEC, crowd)
    edge = v["edge_on_yes"] / (v["edge_on_yes"] + v["edge_on_no"])
    ok = edge.notna()
    assert np.corrcoef(manifest["inclination_deg"][ok], edge[ok])[0, 1] > 0.6
    arms = v["spiral_arms_yes"] / (v["spiral_arms_yes"] + v["spiral_arms_no"])
    has_arms = manifest["n_arms"].to_numpy() > 0
    assert arms[has_arms].mean() > arms[~has_arms].mean() + 0.3
    clumpy = v["clumpy_yes"] / (v["clumpy_yes"] + v["clumpy_no"])
    assert clumpy[blue].mean() > clumpy[~blue].mean() + 0.4
    many = v["clump_count_three_plus"] / (v["clump_count_three_plus"] + v["clump_count_one_or_two"])
    assert many[blue].mean() > 0.3  # three knots: many notice all of them
    odd = v["odd_feature_yes"] / (v["odd_feature_yes"] + v["odd_feature_no"])
    assert odd[red].mean() > odd[~red].mean() + 0.4
    # nobody says "odd" much when there is nothing odd, but random answers exist
    assert 0.02 < odd[~red].mean() < 0.15


def test_votes_never_read_flux_fractions_or_classes(tiny_survey, crowd):
    """The vote simulator sees how objects look, not what they are: it runs on the appearance and
    host columns alone, and scrambling the truth's flux fractions and classes changes no vote."""
    manifest, truth = tiny_survey["manifest"], tiny_survey["truth"]
    v = simulate_votes(manifest, truth, SPEC, crowd)
    only = simulate_votes(manifest[HOST_COLUMNS], truth[APPEARANCE_COLUMNS], SPEC, crowd)
    pd.testing.assert_frame_equal(v, only)
    rng = np.random.default_rng(1)
    scrambled = truth.assign(flux_fraction_g=rng.permutation(truth["flux_fraction_g"].to_numpy()),
                             kind=rng.permutation(truth["kind"].to_numpy()), flux_g=0.0, flux_r=0.0)
    pd.testing.assert_frame_equal(v, simulate_votes(manifest.assign(n_clumps=0, n_odd=9, n_knots=3), scrambled,
                                                    SPEC, crowd))
    with pytest.raises(ValueError, match="appearance column"):
        simulate_votes(manifest, truth.drop(columns="contrast_g"), SPEC, crowd)
    with pytest.raises(ValueError, match="bulge_to_total"):
        simulate_votes(manifest.drop(columns="bulge_to_total"), truth, SPEC, crowd)


def test_morphology_pool_never_holds_a_detection_galaxy(tiny_survey, votes):
    """A pretraining galaxy that is also in the detection survey (same id, same galaxy_id or the
    same place on the sky) is left out and counted."""
    pop = tiny_survey["manifest"].assign(galaxy_id=lambda d: d["subject_id"].astype(str))
    survey = pd.DataFrame({"subject_id": [pop["subject_id"].iloc[0], 1], "galaxy_id": ["x", pop["galaxy_id"].iloc[1]],
                           "ra": [0.0, 0.0], "dec": [0.0, 0.0]})
    survey.loc[len(survey)] = [2, "y", pop["ra"].iloc[2] + 0.5 / 3600, pop["dec"].iloc[2]]  # 0.5" away
    same = detection_overlap(pop, survey)
    assert same.tolist()[:4] == [True, True, True, False] and same.sum() == 3
    labels = votes[votes["subject_id"] != pop["subject_id"].iloc[5]]
    images, counts, info = morphology_pool(pop, labels, vote_columns(), survey, tiny_survey["root"] / "png")
    assert info == {"population": 60, "used": 56, "in_detection_survey": 3, "without_votes": 1}
    assert len(images) == len(counts) == 56


def test_vote_catalogue_round_trip_and_errors(votes, tmp_path):
    path = tmp_path / "votes.csv"
    votes.to_csv(path, index=False)
    table, questions = read_vote_catalogue(path)
    assert list(questions) == list(QUESTIONS) and len(table) == len(votes)
    # a catalogue with fewer questions is fine: the tree is cut where answers are missing
    votes.drop(columns=[c for c in votes.columns if c.startswith("edge_on")]).to_csv(path, index=False)
    _, questions = read_vote_catalogue(path)
    assert "edge_on" not in questions and questions["bulge_size"][1] is None
    bad = votes.copy()
    bad = bad.drop(columns=["bulge_size_small"])
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"question 'bulge_size' lacks column\(s\) \['bulge_size_small'\]"):
        read_vote_catalogue(path)
    bad = votes.copy().astype({"clumpy_yes": object})
    bad.loc[4, "clumpy_yes"] = "many"
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"column 'clumpy_yes' row 6 is not a non-negative count \('many'\)"):
        read_vote_catalogue(path)
    pd.concat([votes, votes.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=f"subject_id {votes.subject_id.iloc[0]} appears more than once"):
        read_vote_catalogue(path)
    votes[["subject_id"]].to_csv(path, index=False)
    with pytest.raises(ValueError, match="none of the columns"):
        read_vote_catalogue(path)


def test_a_configured_question_without_votes_stops_the_pretraining(votes, tmp_path, default_config):
    """pretrain.questions (default: the whole tree) are the questions the encoder learns; a vote
    table that lacks one, or where nobody answered it, is an error naming the question and file."""
    assert default_config["pretrain"]["questions"] == list(QUESTIONS)
    path = tmp_path / "votes.csv"
    votes.to_csv(path, index=False)
    table, questions = read_vote_catalogue(path, required=["smooth_or_featured", "bulge_size"])
    assert list(questions) == ["smooth_or_featured", "bulge_size"] and questions["bulge_size"][1] is None
    assert list(table.columns) == ["subject_id"] + vote_columns(questions)
    votes.drop(columns=["edge_on_yes", "edge_on_no"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: no votes for question 'edge_on'"):
        read_vote_catalogue(path, required=QUESTIONS)
    votes.assign(odd_feature_yes=0, odd_feature_no=0).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no votes for question 'odd_feature'"):
        read_vote_catalogue(path, required=QUESTIONS)
    with pytest.raises(ValueError, match=r"\['ring'\] are not questions of the tree"):
        read_vote_catalogue(path, required=["smooth_or_featured", "ring"])


def test_vote_loss_by_hand():
    questions = {"a": (("x", "y"), None), "b": (("u", "v", "w"), None)}
    slices = question_slices(questions)
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0, 0.0], [1.0, 1.0, 5.0, 5.0, 5.0]])
    counts = torch.tensor([[1.0, 3.0, 0.0, 0.0, 0.0], [2.0, 2.0, 3.0, 0.0, 0.0]])
    # galaxy 0: question a only (b unanswered): -(0.25 log 0.25 + 0.75 log 0.75); galaxy 1: log 2 + log 3
    expected = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2) + math.log(3)) / 2
    assert float(vote_loss(logits, counts, slices)) == pytest.approx(expected, rel=1e-6)


def test_group_pooled_classifier_is_exactly_invariant():
    from clumpfinder.detection.detector import build_encoder

    torch.manual_seed(0)
    enc, nf = build_encoder(BackboneSpec("resnet18"))
    model = GroupPooledClassifier(enc, nf, 4, "imagenet").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        for g in range(8):
            assert torch.allclose(model(dihedral_view(x, g)), ref, atol=1e-5), g
        # a single view is not invariant: the pooling is what makes it so
        assert not torch.allclose(model(dihedral_view(x, 1), [0]), model(x, [0]), atol=1e-3)
    # the eight views are the eight distinct elements of D4
    img = torch.arange(16.0).view(1, 1, 4, 4)
    assert len({tuple(dihedral_view(img, g).flatten().tolist()) for g in range(8)}) == 8


def test_pool_never_includes_the_test_split(tiny_survey, votes):
    manifest = tiny_survey["manifest"]
    splits = pd.DataFrame({"subject_id": manifest["subject_id"],
                           "split": np.where(np.arange(len(manifest)) % 5 == 0, "test", "train")})
    labels = votes[votes["subject_id"] != manifest["subject_id"].iloc[1]]  # one galaxy without votes
    images, counts, info = pretraining_pool(manifest, splits, ["train"], labels, vote_columns(),
                                            tiny_survey["root"] / "png")
    assert info == {"pool": 48, "used": 47, "without_labels": 1}
    assert len(images) == len(counts) == 47 and counts.shape[1] == len(vote_columns())
    with pytest.raises(ValueError, match="must not include the test split"):
        pretraining_pool(manifest, splits, ["train", "test"], labels, vote_columns(), tiny_survey["root"] / "png")


@pytest.fixture(scope="module")
def train_pool(tiny_survey, votes):
    """(images, counts) of every tiny-survey galaxy, all in the training split."""
    manifest = tiny_survey["manifest"]
    splits = pd.DataFrame({"subject_id": manifest["subject_id"], "split": "train"})
    images, counts, _ = pretraining_pool(manifest, splits, ["train"], votes, vote_columns(),
                                         tiny_survey["root"] / "png")
    return images, counts


def test_pretraining_runs_and_reports(train_pool):
    images, counts = train_pool
    spec = PretrainSpec(epochs=2, batch_size=16, lr=1e-3, weight_decay=1e-4, warmup_steps=1, views=2,
                        validation_fraction=0.2, seed=0)
    encoder, metrics = pretrain_encoder(images, counts, QUESTIONS, BackboneSpec("resnet18"), spec, threads=1)
    assert metrics["n_train"] == 48 and metrics["n_val"] == 12 and metrics["steps"] == 6
    assert set(metrics["val_fraction_rmse"]) <= set(QUESTIONS)
    assert all(0 <= v <= 1 for v in metrics["val_fraction_rmse"].values())
    assert metrics["max_logit_change_under_d4"] < 1e-4
    assert set(metrics["val_fraction_rmse_vote_noise"]) == set(metrics["val_fraction_rmse"])
    assert all(0 <= v["agreement"] <= 1 and v["n"] > 0 for v in metrics["val_confident_agreement"].values())
    assert 0 <= metrics["val_confident_agreement_all"] <= 1
    assert all(math.isfinite(h["loss"]) for h in metrics["history"])
    assert isinstance(encoder(torch.rand(1, 3, 64, 64)), torch.Tensor)


def test_pretraining_at_a_coarser_pixel_scale_keeps_the_field(train_pool):
    """``image_size`` resamples every galaxy (antialiased) before pretraining: the same field, its
    light kept; ``on_epoch`` sees the encoder after every epoch, the last one the returned encoder."""
    from clumpfinder.detection.pretrain import resized

    images, counts = train_pool[0][:20], train_pool[1][:20]
    side = images[0].shape[-1]
    small = resized(images, side // 2)
    assert all(im.shape == (3, side // 2, side // 2) and im.dtype == torch.uint8 for im in small)
    assert resized(small, side // 2)[0] is small[0]  # already that size: untouched
    for big, little in zip(images[:5], small[:5]):  # mean brightness kept (to the uint8 rounding)
        assert float(little.float().mean()) == pytest.approx(float(big.float().mean()), abs=1.0)
    spec = PretrainSpec(epochs=2, batch_size=8, lr=1e-3, weight_decay=1e-4, warmup_steps=1, views=1,
                        validation_fraction=0.2, seed=0, image_size=side // 2)
    snapshots = {}
    encoder, metrics = pretrain_encoder(
        images, counts, QUESTIONS, BackboneSpec("resnet18"), spec, threads=1, device=CPU,
        on_epoch=lambda epoch, enc: snapshots.update({epoch: {k: v.clone() for k, v in enc.state_dict().items()}}))
    assert metrics["image_size"] == side // 2 and sorted(snapshots) == [1, 2]
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in snapshots[2].items())
    assert not all(torch.equal(v, snapshots[2][k]) for k, v in snapshots[1].items())
    with pytest.raises(ValueError, match="image_size must be at least 16"):
        PretrainSpec(epochs=1, batch_size=1, lr=1e-3, weight_decay=0, warmup_steps=0, views=1,
                     validation_fraction=0, seed=0, image_size=8)


def test_vote_noise_and_confident_agreement_by_hand():
    """Two questions, three galaxies. Noise: fractions f of n votes scatter by f (1 - f) / (n - 1).
    Agreement: only galaxies whose leading answer holds >= 80 % of the votes count."""
    from clumpfinder.detection.pretrain import confident_agreement, vote_noise_rmse

    slices = [("a", slice(0, 2)), ("b", slice(2, 5))]
    counts = torch.tensor([[9.0, 1.0, 0.0, 0.0, 4.0],   # a: confident (0.9) yes; b: confident (1.0) third
                           [5.0, 5.0, 1.0, 1.0, 2.0],   # a: split; b: not confident
                           [0.0, 10.0, 0.0, 0.0, 0.0]])  # a: confident (1.0) second; b: nobody answered
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 1.0],   # a right, b right
                           [0.0, 1.0, 5.0, 0.0, 0.0],
                           [3.0, 0.0, 0.0, 0.0, 0.0]])  # a wrong
    agree = confident_agreement(logits, counts, slices)
    assert agree == {"a": {"agreement": 0.5, "n": 2}, "b": {"agreement": 1.0, "n": 1}}
    noise = vote_noise_rmse(counts, slices)
    expect_a = np.sqrt(np.mean([0.9 * 0.1 / 9] * 2 + [0.25 / 9] * 2 + [0.0] * 2))
    assert noise["a"] == pytest.approx(expect_a, abs=1e-4)
    f_b = np.array([[0, 0, 1.0], [0.25, 0.25, 0.5]])
    assert noise["b"] == pytest.approx(np.sqrt(np.mean(f_b * (1 - f_b) / np.array([[3.0], [3.0]]))), abs=1e-4)


def test_killed_pretraining_resumes_and_ends_as_an_uninterrupted_run(train_pool, tmp_path, monkeypatch):
    """The pretraining shares the detector's loop (clumpfinder.detection.loop): a run stopped part-way
    resumes from its last epoch's checkpoint (model, optimiser, the batch generator's state) and
    ends with the same encoder, losses and validation losses as a run never stopped."""
    import clumpfinder.detection.pretrain as pretrain

    images, counts = train_pool[0][:30], train_pool[1][:30]  # 24 to train on, 6 held out
    spec = PretrainSpec(epochs=2, batch_size=8, lr=1e-3, weight_decay=1e-4, warmup_steps=1, views=2,
                        validation_fraction=0.2, seed=0)
    ckpt = tmp_path / "last.pt"
    real_loss, calls = pretrain.vote_loss, {"n": 0}

    def dies_in_the_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # 3 steps an epoch, then its validation loss: the 2nd epoch's 2nd step
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(pretrain, "vote_loss", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain_encoder(images, counts, QUESTIONS, BackboneSpec("resnet18"), spec, threads=1, checkpoint=ckpt,
                         device=CPU)
    assert torch.load(ckpt, weights_only=False)["step"] == 3
    monkeypatch.setattr(pretrain, "vote_loss", real_loss)
    resumed, m_resumed = pretrain_encoder(images, counts, QUESTIONS, BackboneSpec("resnet18"), spec, threads=1,
                                          checkpoint=ckpt, device=CPU)
    whole, m_whole = pretrain_encoder(images, counts, QUESTIONS, BackboneSpec("resnet18"), spec, threads=1, device=CPU)
    assert m_resumed["resumed_at_step"] == 3 and m_whole["resumed_at_step"] is None
    for key in ("loss", "val_loss"):
        assert [h[key] for h in m_resumed["history"]] == [h[key] for h in m_whole["history"]]
    for (k, a), b in zip(resumed.state_dict().items(), whole.state_dict().values()):
        assert torch.equal(a, b), k


def test_pretraining_does_not_resume_from_other_starting_weights(train_pool, tmp_path, monkeypatch):
    """A checkpoint made from other starting weights (a re-made encoder under a clumpy classifier,
    a replaced file) is not resumed: the job starts over."""
    import clumpfinder.detection.pretrain as pretrain
    from clumpfinder.detection.detector import build_encoder

    images, counts = train_pool[0][:20], train_pool[1][:20]
    weights = tmp_path / "start.pt"
    torch.save(build_encoder(BackboneSpec("resnet18"))[0].state_dict(), weights)
    backbone = BackboneSpec("resnet18", init=f"file:{weights}")
    spec = PretrainSpec(epochs=2, batch_size=8, lr=1e-3, weight_decay=1e-4, warmup_steps=1, views=1,
                        validation_fraction=0.2, seed=0)
    ckpt, real_loss, calls = tmp_path / "last.pt", pretrain.vote_loss, {"n": 0}

    def dies_in_the_second_epoch(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # 2 steps and the validation of epoch 1, then the first step of epoch 2
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(pretrain, "vote_loss", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain_encoder(images, counts, QUESTIONS, backbone, spec, threads=1, checkpoint=ckpt)
    monkeypatch.setattr(pretrain, "vote_loss", real_loss)
    assert ckpt.exists()
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in torch.load(weights).items()}, weights)
    _, metrics = pretrain_encoder(images, counts, QUESTIONS, backbone, spec, threads=1, checkpoint=ckpt)
    assert metrics["resumed_at_step"] is None and metrics["steps"] == 4


def test_clumpy_labels_from_swap():
    subjects = pd.DataFrame({"subject_id": [1, 2, 3], "swap_prob": [0.9, np.nan, 0.1]})
    lab = clumpy_labels(subjects)
    assert lab["subject_id"].tolist() == [1, 3] and lab["clumpy_no"].tolist() == pytest.approx([0.1, 0.9])
    assert vote_columns(CLUMPY_QUESTIONS) == ["clumpy_yes", "clumpy_no"]
    with pytest.raises(ValueError, match="no 'swap_prob' column"):
        clumpy_labels(subjects.drop(columns="swap_prob"))


def test_views_are_validated():
    with pytest.raises(ValueError, match="views must be 1..8"):
        PretrainSpec(epochs=1, batch_size=1, lr=1e-3, weight_decay=0, warmup_steps=0, views=9,
                     validation_fraction=0, seed=0)
