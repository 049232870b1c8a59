"""Bootstrap intervals of `deltadit eval` on synthetic cases whose answer is known."""

import numpy as np
import pytest
import scipy.linalg

from deltadit.eval.stats import accuracy_interval, bootstrap, fid_interval, frechet_distance


def test_accuracy_interval_contains_the_truth_and_shrinks_with_samples():
    rng = np.random.default_rng(1)
    small = accuracy_interval(rng.random(100) < 0.8, rounds=300)
    large = accuracy_interval(rng.random(2500) < 0.8, rounds=300)
    for ci in (small, large):
        assert ci.low <= 0.8 <= ci.high and ci.low <= ci.value <= ci.high
    # the width of a proportion's interval goes as 1/sqrt(n): 5x narrower for 25x the samples
    assert large.width == pytest.approx(small.width / 5, rel=0.35)


def test_bootstrap_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    trials = [bootstrap(rng.normal(3.0, 1.0, 60), np.mean, rounds=200, seed=i) for i in range(100)]
    hits = sum(t.low <= 3.0 <= t.high for t in trials)
    assert 85 <= hits <= 100  # nominal 95; binomial(100, 0.95) is below 85 with probability < 1e-4


def test_frechet_distance_equals_the_matrix_square_root_formula():
    rng = np.random.default_rng(3)
    d = 16
    ref = rng.normal(size=(200, d))
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    for n in (10, 50):  # fewer and more samples than dimensions
        feats = rng.normal(0.3, 1.2, size=(n, d))
        s = np.cov(feats, rowvar=False)
        expected = ((feats.mean(0) - mu) ** 2).sum() + np.trace(sigma + s - 2 * scipy.linalg.sqrtm(sigma @ s).real)
        assert frechet_distance(mu, sigma, feats) == pytest.approx(expected, rel=1e-6)


def test_fid_interval_narrows_with_more_generated_samples():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(2000, 8))
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    small = fid_interval(mu, sigma, rng.normal(0.5, 1.0, size=(100, 8)), rounds=100)
    large = fid_interval(mu, sigma, rng.normal(0.5, 1.0, size=(1600, 8)), rounds=100)
    assert large.width < small.width / 2
    assert large.low <= 8 * 0.25 + 0.1 and large.high >= 8 * 0.25 - 0.1  # true FID: ||0.5||^2 * 8 dims = 2.0


def test_eval_samples_must_be_a_multiple_of_the_class_prompts(capsys):
    from deltadit.cli import main

    with pytest.raises(SystemExit) as exit_info:  # refused while parsing, before any work
        main(["eval", "--samples", "15"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --samples | 15 is not a multiple of the 10 class prompts. "
                                               "Expected: e.g. 10.")


def test_fid_interval_is_bias_corrected_so_it_holds_its_own_estimate():
    """Resampling repeats images, which FID reads as lost diversity: the plain percentile interval lay
    wholly above the estimate on `animals` (109.95 [119.26, 130.02] at 200 images). The corrected one
    brackets it, while the uncorrected interval of the same resamples does not."""
    rng = np.random.default_rng(5)
    d = 32
    mu, sigma = np.zeros(d), np.eye(d)
    feats = rng.normal(0.2, 1.0, (80, d))
    ci = fid_interval(mu, sigma, feats, rounds=200)
    plain = bootstrap(feats, lambda f: frechet_distance(mu, sigma, f), rounds=200)
    assert plain.low > plain.value  # the defect being corrected
    assert ci.low <= ci.value <= ci.high
    assert ci.width == pytest.approx(plain.width)
