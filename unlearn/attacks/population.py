"""Population attacks: no reference models, one decision rule shared by every sample."""

from __future__ import annotations

import numpy as np
from sklearn.svm import SVC

from unlearn.attacks.base import AttackInput, AttackResult, register_attack


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
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(features, targets)
    member = clf.decision_function(inputs.forget.confidence[:, None])
    nonmember = clf.decision_function(inputs.test.confidence[eval_neg][:, None])
    efficacy = float(np.mean(member <= 0.0))
    return AttackResult(member, nonmember, {"mia_efficacy": efficacy})
