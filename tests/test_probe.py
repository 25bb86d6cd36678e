"""The one linear probe (eval.choose_probe_lr, eval.probe_features): its lr is chosen on the
training faces alone, the choice is the right one where a large lr fails, and it is reproducible."""
import torch

import eval as evaluate

CLASSES = ["a", "b", "c"]


def noisy_label_features(seed=0, n=2400, d=128, noise=0.6, fit=2000):
    """Three Gaussian classes in d dimensions whose training labels are 60 % redrawn at random: a
    large lr fits the noise of the last batches (about 60 % on the clean faces) where a small one
    averages it out (about 88 %). Built so that the right lr is the small one. Column 0 holds each
    face's index, to tell training faces from scored ones. -> (train, test) as (x, y) pairs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 0.3 * torch.randn(3, d, generator=g)[y]
    redrawn = torch.where(torch.rand(n, generator=g) < noise,
                          torch.randint(0, 3, (n,), generator=g), y)
    x[:, 0] = torch.arange(n, dtype=torch.float)
    return (x[:fit], redrawn[:fit]), (x[fit:], y[fit:])


def accuracy_at(lr, train, test):
    report, _ = evaluate.train_head(None, train, test, CLASSES, epochs=5, batch_size=256, lr=lr,
                                    progress=False)
    return report["last_epoch_accuracy"]


def test_the_chosen_lr_is_the_one_that_works():
    train, test = noisy_label_features()
    # the construction holds: the large lr fails on the scored faces, the small one works
    assert accuracy_at(10.0, train, test) < 0.7 < 0.8 < accuracy_at(0.01, train, test)
    lr, scores = evaluate.choose_probe_lr(*train, CLASSES, epochs=5, lrs=(10.0, 1.0, 0.01))
    assert lr == 0.01
    assert scores[0.01] > scores[10.0] + 0.1
    report, _ = evaluate.probe_features(train, test, CLASSES, epochs=5)
    assert report["protocol"] == "chosen" and report["probe_lr"] <= 0.03
    assert report["last_epoch_accuracy"] > accuracy_at(10.0, train, test) + 0.15


def test_the_hold_out_never_holds_a_scored_face(monkeypatch):
    """Every head trained while choosing the lr is fitted and scored on training faces only, and
    the scored split does not change the choice."""
    train, test = noisy_label_features()
    seen = []
    original = evaluate.train_head

    def spy(trunk, cached, scored, *args, **kwargs):
        seen.append((cached[0][:, 0], scored[0][:, 0]))
        return original(trunk, cached, scored, *args, **kwargs)

    monkeypatch.setattr(evaluate, "train_head", spy)
    report, _ = evaluate.probe_features(train, test, CLASSES, epochs=2)
    choosing, final = seen[:-1], seen[-1]
    assert len(choosing) == len(evaluate.PROBE_LRS)
    for fitted, held in choosing:
        assert fitted.max() < 2000 and held.max() < 2000  # training faces only
        assert len(held) == 200 and not set(fitted.tolist()) & set(held.tolist())
    assert final[1].min() >= 2000  # only the final head is scored on the held-out split
    other_test = (torch.randn(50, 128), torch.randint(0, 3, (50,)))
    again, _ = evaluate.probe_features(train, other_test, CLASSES, epochs=2)
    assert again["probe_lr"] == report["probe_lr"]
    assert again["probe_lr_scores"] == report["probe_lr_scores"]


def test_few_labels_choose_by_five_folds_that_cover_every_face(monkeypatch):
    (x, y), _ = noisy_label_features(n=300, fit=300)
    held_sets = []
    original = evaluate.train_head

    def spy(trunk, cached, scored, *args, **kwargs):
        held_sets.append(scored[0][:, 0].long().tolist())
        return original(trunk, cached, scored, *args, **kwargs)

    monkeypatch.setattr(evaluate, "train_head", spy)
    evaluate.choose_probe_lr(x, y, CLASSES, epochs=1, lrs=(0.1,))
    assert len(held_sets) == 5
    assert sorted(i for held in held_sets for i in held) == list(range(300))


def test_the_same_seed_gives_the_same_choice():
    train, _ = noisy_label_features(seed=1)
    first = evaluate.choose_probe_lr(*train, CLASSES, seed=3, epochs=3)
    second = evaluate.choose_probe_lr(*train, CLASSES, seed=3, epochs=3)
    assert first == second


def test_a_given_lr_is_used_as_given():
    train, test = noisy_label_features()
    report, _ = evaluate.probe_features(train, test, CLASSES, lr=0.3, epochs=2)
    assert report["probe_lr"] == 0.3 and report["lr"] == 0.3
    assert report["protocol"] == "fixed lr" and report["probe_lr_scores"] == {}
