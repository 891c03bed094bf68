"""Population attacks: no reference models, one decision rule shared by every sample."""

from __future__ import annotations

import numpy as np

from unlearn.attacks.base import AttackInput, AttackRefused, AttackResult, register_attack


@register_attack("loss_threshold")
def loss_threshold(inputs: AttackInput) -> AttackResult:
    """Yeom et al. (CSF 2018): members have lower loss; score = -loss.

    Threshold-free: the AUC sweeps every threshold.
    """
    return AttackResult(-inputs.forget.loss, -inputs.test.loss)


@register_attack("svc_confidence")
def svc_confidence(inputs: AttackInput) -> AttackResult:
    """SalUn's SVC-MIA on true-class confidence (Unlearn-Saliency ``SVC_MIA.py``).

    An RBF ``SVC(C=3, gamma="auto")`` is fitted on the model's own confidences: shadow members
    from D_R (label 1) against shadow non-members from D_T (label 0). Deviation from the
    original, on purpose (mia-and-peers.md section 3.3): D_T is split in half with a seeded
    permutation, one half to fit the SVC and the other as the negatives of the AUC, so the
    attack is never scored on its own training points; shadow members are a seeded random
    sample of D_R (not its first rows), as many as the fitting half of D_T.

    The score is the SVC's decision function (higher = member). ``extra["mia_efficacy"]`` is
    SalUn's reported number: the share of D_F predicted non-member.
    """
    rng = np.random.default_rng(inputs.seed)
    n_test = len(inputs.test)
    order = rng.permutation(n_test)
    fit_neg, eval_neg = order[: n_test // 2], order[n_test // 2 :]
    n_shadow = min(len(fit_neg), len(inputs.retain))
    fit_pos = rng.choice(len(inputs.retain), size=n_shadow, replace=False)
    features = np.concatenate(
        [inputs.retain.confidence[fit_pos], inputs.test.confidence[fit_neg]]
    )[:, None]
    targets = np.concatenate([np.ones(n_shadow), np.zeros(len(fit_neg))])
    if len(np.unique(targets)) < 2:
        raise ValueError("svc_confidence needs both retain and test samples to fit on")
    from sklearn.svm import SVC  # imported here: scikit-learn costs ~1 s to import in every (Dask) worker

    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(features, targets)
    member = clf.decision_function(inputs.forget.confidence[:, None])
    nonmember = clf.decision_function(inputs.test.confidence[eval_neg][:, None])
    efficacy = float(np.mean(member <= 0.0))
    return AttackResult(member, nonmember, {"mia_efficacy": efficacy})


_LR_FOLDS = 5  # out-of-fold scoring
_LR_CV_SPLITS = 10  # the starter kit's StratifiedShuffleSplit count (10 % test fraction, sklearn's default)
_LR_MIN_PER_CLASS = 6  # 5 folds need 5 per class; a 10 % split of 2n points needs n >= 6 to hold both classes


@register_attack("loss_lr")
def loss_lr(inputs: AttackInput) -> AttackResult:
    """Logistic regression on the per-sample loss: the "simple MIA" (mia-and-peers.md section 3.2).

    The NeurIPS 2023 unlearning competition starter kit and SCRUB fit ``LogisticRegression()``
    on the cross-entropy loss of D_F (label 1) against D_T (label 0). The larger of the two
    sets is first subsampled, seeded, to the size of the smaller, so both classes weigh the same.

    Scores are out-of-fold member probabilities: a seeded ``StratifiedKFold(5)`` splits the
    balanced sample, and each fold is scored by a model fitted on the other four, so no sample
    is scored by a model that saw it. ``extra["cv_accuracy"]`` is the starter kit's reported
    number: the mean test accuracy of ``LogisticRegression()`` over 10 seeded
    ``StratifiedShuffleSplit`` splits.

    Args:
        inputs: Attack inputs; uses ``forget.loss``, ``test.loss`` and ``seed``.

    Returns:
        Scores of the balanced subsample only: min(N_F, N_T) members and as many non-members.

    Raises:
        AttackRefused: If either set has fewer than 6 samples.
    """
    member, other = inputs.forget.loss, inputs.test.loss
    n = min(len(member), len(other))
    if n < _LR_MIN_PER_CLASS:
        raise AttackRefused(
            f"loss_lr needs at least {_LR_MIN_PER_CLASS} forget and {_LR_MIN_PER_CLASS} test samples "
            f"({_LR_FOLDS} cross-validation folds, and a 10% split holding both classes); "
            f"got {len(member)} forget and {len(other)} test"
        )
    rng = np.random.default_rng(inputs.seed)
    if len(member) > n:
        member = member[np.sort(rng.choice(len(member), size=n, replace=False))]
    if len(other) > n:
        other = other[np.sort(rng.choice(len(other), size=n, replace=False))]
    features = np.concatenate([member, other])[:, None]  # (2n, 1)
    labels = np.concatenate([np.ones(n), np.zeros(n)])  # (2n,)
    from sklearn.linear_model import LogisticRegression  # imported here: see svc_confidence
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit, cross_val_score

    seed = int(inputs.seed) % (2**32)
    scores = np.empty(2 * n)
    for fit_rows, held_rows in StratifiedKFold(_LR_FOLDS, shuffle=True, random_state=seed).split(features, labels):
        clf = LogisticRegression().fit(features[fit_rows], labels[fit_rows])
        scores[held_rows] = clf.predict_proba(features[held_rows])[:, list(clf.classes_).index(1.0)]
    splits = StratifiedShuffleSplit(n_splits=_LR_CV_SPLITS, random_state=seed)
    accuracy = cross_val_score(LogisticRegression(), features, labels, cv=splits, scoring="accuracy")
    return AttackResult(scores[:n], scores[n:], {"cv_accuracy": float(np.mean(accuracy))})
