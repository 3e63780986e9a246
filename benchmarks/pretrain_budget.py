"""How much galaxy pretraining does the morphology encoder need before it has learned its votes?

    python benchmarks/pretrain_budget.py --configfile config/development.yaml \\
        --arm "3 epochs" epochs=3 --arm "12 epochs, 1 view" epochs=12 views=1 \\
        --n-galaxies 1000 --precision fp32 --threads 1

The pretraining population is simulated as the workflow simulates it (the survey's physics with the
population's own seed, ids apart from the survey's; here with ``--n-galaxies`` galaxies), with its
simulated Galaxy Zoo votes, once for every arm (``--cache DIR`` keeps it for the next call). Each
``--arm NAME KEY=VALUE ...`` overrides ``pretrain.morphology`` settings and pretrains the encoder of
the configuration's ``resnet18_morphology`` backbone on that pool, as the ``pretrain_morphology``
rule does. Per arm: the validation loss after every epoch (the learning curve), and of the final
encoder, per question, the validation RMSE of the predicted vote fractions beside the mean-vote
baseline and the votes' own sampling noise, the agreement with confident votes (leading answer
>= 80 %, as Dieleman et al. 2015 report), wall time and galaxies per second; and beside them the
oracle's RMSE (:func:`oracle_rmse`: the expected votes of each galaxy given all the simulation
knows of it, the floor for any encoder, higher than the sampling noise because the simulated
voters disagree per galaxy). The targets: every question's RMSE <= 0.7 x its baseline; mean RMSE
<= 0.12 or within 0.02 of the votes' noise.
Development seeds only: the population's seed is the configuration's (``morphology.population``).
``--snapshot-dir DIR --snapshot-epochs 2 6 20`` keeps the encoder after those epochs
(``DIR/<arm>/epoch<N>.pt``, a state dict as the workflow saves it, loadable by a ``file:`` init): the
starting points of ``benchmarks/pretrain_dose.py``. Writes ``--out`` (JSON with command, date,
commit and data seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
from provenance import command_line, git_commit, merged_config  # noqa: E402

from clumpfinder.compute import ComputeSpec  # noqa: E402
from clumpfinder.config import Plan  # noqa: E402
from clumpfinder.data.morphology import VoteSpec, simulate_votes, vote_columns, QUESTIONS  # noqa: E402
from clumpfinder.data.simulate import SurveySpec, simulate_catalogue, simulate_survey  # noqa: E402
from clumpfinder.data.volunteers import CrowdSpec  # noqa: E402
from clumpfinder.detection.detector import BackboneSpec  # noqa: E402
from clumpfinder.detection.pretrain import PretrainSpec, morphology_pool, pretrain_encoder, save_encoder  # noqa: E402

#: subject ids of the population (the workflow's PRETRAINING_FIRST_SUBJECT_ID)
FIRST_ID = 10_000_000


def population(cfg: dict, n_galaxies: int | None, cache: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """(population manifest, its votes, its PNG folder), simulated into ``cache`` unless there."""
    spec = _plan(cfg).pretraining_population_spec()
    if n_galaxies:
        spec = {**spec, "n_galaxies": n_galaxies}
    digest = hashlib.sha256(json.dumps([spec, cfg["morphology"], cfg["volunteers"]], sort_keys=True).encode())
    key = f"seed{spec['seed']}_n{spec['n_galaxies']}_{digest.hexdigest()[:12]}"  # a changed simulation: a new one
    folder = cache / key
    if not (folder / "votes.csv").exists():
        t0 = time.perf_counter()
        manifest, truth = simulate_survey(SurveySpec.from_config(spec), folder / "png", None, workers=1,
                                          first_subject_id=FIRST_ID)
        votes = simulate_votes(manifest, truth, VoteSpec.from_config(cfg["morphology"]),
                               CrowdSpec.from_config(cfg["volunteers"]))
        manifest.to_csv(folder / "manifest.csv", index=False)
        votes.to_csv(folder / "votes.csv", index=False)
        print(f"simulated {len(manifest)} galaxies and their votes in {time.perf_counter() - t0:.0f} s", flush=True)
    return pd.read_csv(folder / "manifest.csv"), pd.read_csv(folder / "votes.csv"), folder / "png"


def oracle_rmse(cfg: dict, n_galaxies: int | None, votes: pd.DataFrame, val_ids: np.ndarray,
                repeats: int = 12, votes_per_galaxy: int = 400) -> dict[str, float]:
    """Per question, the validation RMSE of the best any encoder could do: the expected vote
    fractions of each galaxy given everything the simulation knows of it (its host, its objects),
    estimated by simulating its votes again ``repeats`` times with ``votes_per_galaxy`` votes each
    and other seeds, against the observed fractions. What stays is what no image holds: the
    finite number of votes and the per-galaxy disagreement of the shape questions
    (``morphology.disagreement``), which :func:`vote_noise_rmse`'s sampling noise leaves out."""
    spec = _plan(cfg).pretraining_population_spec()
    if n_galaxies:
        spec = {**spec, "n_galaxies": n_galaxies}
    manifest, truth = simulate_catalogue(SurveySpec.from_config(spec), first_subject_id=FIRST_ID)
    base, crowd = VoteSpec.from_config(cfg["morphology"]), CrowdSpec.from_config(cfg["volunteers"])
    expected: dict[str, np.ndarray] = {}
    for r in range(repeats):
        again = simulate_votes(manifest, truth, dataclasses.replace(base, seed=base.seed + 1_000_003 * (r + 1),
                                                                    votes_per_galaxy=votes_per_galaxy), crowd)
        again = again.set_index("subject_id").loc[val_ids]
        for q, (answers, _) in QUESTIONS.items():
            c = again[[f"{q}_{a}" for a in answers]].to_numpy(float)
            expected[q] = expected.get(q, 0.0) + c / np.maximum(c.sum(1, keepdims=True), 1) / repeats
    observed = votes.set_index("subject_id").loc[val_ids]
    out = {}
    for q, (answers, _) in QUESTIONS.items():
        c = observed[[f"{q}_{a}" for a in answers]].to_numpy(float)
        n = c.sum(1)
        ok = n > 0
        out[q] = round(float(np.sqrt(((expected[q][ok] - c[ok] / n[ok, None]) ** 2).mean())), 4)
    return out


def _plan(cfg: dict) -> Plan:
    return Plan(cfg, "results", yaml.safe_load((REPO / "config" / "schema.yaml").read_text()))


def check(metrics: dict, oracle: dict[str, float]) -> dict:
    """The issue's targets on one encoder's validation figures, and the oracle's mean beside them."""
    rmse, base, noise = (metrics["val_fraction_rmse"], metrics["val_fraction_rmse_mean_baseline"],
                         metrics["val_fraction_rmse_vote_noise"])
    ratio = {q: round(rmse[q] / base[q], 3) for q in rmse}
    mean_rmse, mean_noise = float(np.mean(list(rmse.values()))), float(np.mean(list(noise.values())))
    return {"rmse_over_baseline": ratio, "every_question_at_most_0.7": all(r <= 0.7 for r in ratio.values()),
            "mean_rmse": round(mean_rmse, 4), "mean_vote_noise": round(mean_noise, 4),
            "mean_oracle_rmse": round(float(np.mean([oracle[q] for q in rmse])), 4),
            "mean_rmse_target_met": bool(mean_rmse <= max(0.12, mean_noise + 0.02)),
            "confident_agreement_at_least_0.95": (metrics["val_confident_agreement_all"] or 0.0) >= 0.95}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", action="append", default=[])
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"))
    ap.add_argument("--n-galaxies", type=int, default=None, help="population size (default: the configuration's)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/clumpfinder_pretrain_budget"))
    ap.add_argument("--snapshot-dir", type=Path, default=None, help="keep encoder snapshots here")
    ap.add_argument("--snapshot-epochs", type=int, nargs="+", default=[], help="after these epochs (from 1)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pretrain_budget_development.json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the epochs as they end
    cfg = merged_config(a.configfile)
    if cfg["report"]["seed_role"] != "development":
        raise SystemExit("pretrain_budget compares settings: run it on the development seeds (config/development.yaml)")
    pop, votes, png = population(cfg, a.n_galaxies, a.cache)
    survey, _ = simulate_catalogue(SurveySpec.from_config(cfg["simulate"]))
    images, counts, pool = morphology_pool(pop, votes, vote_columns(), survey, png)
    if pool["used"] != len(pop):  # the pool's rows are then the population's, in order (the oracle needs its ids)
        raise SystemExit(f"the pretraining pool left out galaxies of the population ({pool}): not a simulated population")
    plan = _plan(cfg)
    backbone = BackboneSpec(**plan.morphology_spec(next(iter(plan.morphology_keys()))))
    arms = {}
    for name, *settings in a.arm:
        over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in settings)}
        spec = PretrainSpec.from_config({**cfg["pretrain"]["morphology"], **over})
        kept = {}

        def snapshot(epoch, encoder, arm=name):
            if a.snapshot_dir and epoch in a.snapshot_epochs:
                path = a.snapshot_dir / "".join(c if c.isalnum() else "_" for c in arm) / f"epoch{epoch}.pt"
                save_encoder(encoder, path)
                kept[epoch] = {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

        _, m = pretrain_encoder(images, counts, QUESTIONS, backbone, spec, threads=a.threads,
                                compute=ComputeSpec(device="cpu", precision=a.precision), on_epoch=snapshot)
        arms[name] = {"settings": over, "n_train": m["n_train"], "n_val": m["n_val"], "steps": m["steps"],
                      "seconds": m["seconds"],
                      "galaxies_per_s": m["galaxies_per_s"], "precision": m["precision"],
                      "learning_curve": [{"epoch": h["epoch"] + 1, "steps": h["steps"], "loss": h["loss"],
                                          "val_loss": h.get("val_loss")} for h in m["history"]],
                      **{k: m[k] for k in ("val_fraction_rmse", "val_fraction_rmse_mean_baseline",
                                           "val_fraction_rmse_vote_noise", "val_confident_agreement",
                                           "val_confident_agreement_all")},
                      "val_fraction_rmse_oracle": oracle_rmse(cfg, a.n_galaxies, votes, pop["subject_id"].to_numpy()[
                          m["val_pool_indices"]])}
        arms[name]["targets"] = check(m, arms[name]["val_fraction_rmse_oracle"])
        arms[name]["snapshots"] = kept
        print(name, json.dumps({k: arms[name][k] for k in ("steps", "seconds", "targets")}), flush=True)
        print("  val loss by epoch", [h["val_loss"] for h in arms[name]["learning_curve"]], flush=True)
    out = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
           "data_seeds": {"population": cfg["morphology"]["population"]["seed"], "morphology": cfg["morphology"]["seed"],
                          "volunteers": cfg["volunteers"]["seed"]},
           "pool": pool, "threads": a.threads, "arms": arms}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
