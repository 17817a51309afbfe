"""The study's sampler (seeded per trial) and pruner, from params.yaml's tune section."""
from __future__ import annotations

import warnings

import optuna

from ..config import Params
from ..keys import make_key


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Samples each trial with a fresh sampler seeded from ``seed`` and the trial's number (see the module doc).

    One seed for a whole run would make every worker, and every resumed run, draw the same sequence; the trial
    number is unique in the study and known before anything is sampled.  Samplers keep their state between trials
    in the study's storage (TPE reads the finished trials, NSGA-II its generations), so a fresh one per trial
    samples as the long-lived one would.
    """

    def __init__(self, make, seed: int):
        self._make = make          # seed -> a sampler
        self._seed = seed
        self._by_trial: dict = {}  # trial number -> its sampler, until the trial ends

    def for_trial(self, number: int):
        if number not in self._by_trial:
            self._by_trial[number] = self._make(int(make_key("sampler", self._seed, number)[:8], 16))
        return self._by_trial[number]

    def infer_relative_search_space(self, study, trial):
        return self.for_trial(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.for_trial(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.for_trial(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.for_trial(trial.number).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.for_trial(trial.number).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's seed is fixed by its number."""


def make_sampler(p: Params) -> TrialSeededSampler:
    kind = p.tune.sampler
    if kind == "random":
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), p.seed)
    if kind == "nsga2":
        return TrialSeededSampler(lambda seed: optuna.samplers.NSGAIISampler(seed=seed), p.seed)

    def tpe(seed: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(5, p.tune.trials))
    return TrialSeededSampler(tpe, p.seed)


def make_pruner(p: Params, multi: bool):
    if multi or p.tune.pruner == "none":  # Optuna's pruners work on a single objective only
        return optuna.pruners.NopPruner()
    if p.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=p.tune.epochs)
    # from the first finetune epoch on, once three trials have finished
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)

