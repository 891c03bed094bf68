"""The verification policy in params.yaml is checked against the attack registry before any work."""

import pytest
import yaml
from conftest import REPO

from tasks.stage.checks import check_params, promotion_attacks
from unlearn.config import ConfigError, parse_params


def _params(**verify_and_gate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in verify_and_gate.items():
        raw[section].update(values)
    return parse_params(raw)


def test_the_shipped_policy_is_valid():
    check_params(_params())


@pytest.mark.parametrize("attack", ["lira_online", "lira_online_global", "ulira", "epsilon_score"])
def test_audit_only_attacks_are_refused_at_promotion_time_with_the_alternatives(attack):
    with pytest.raises(ConfigError, match="cannot run at promotion time") as info:
        check_params(_params(verify={"attacks": ["loss_threshold", attack]}, gate={"tolerances": {}}))
    assert "lira_offline" in str(info.value) and attack not in promotion_attacks()


def test_reference_attacks_need_reference_models():
    with pytest.raises(ConfigError, match="verify.references.count >= 2"):
        check_params(_params(verify={"references": {"count": 0}}))


@pytest.mark.parametrize("value, message", [
    ({"count": 3}, "even number"), ({"batched": "sometimes"}, "auto, always or never")])
def test_reference_settings_are_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        _params(verify={"references": value})


@pytest.mark.parametrize("tolerances, ok", [
    ({"mia.lira_offline.tpr_at_lowest_fpr": 0.1}, True),
    ({"mia.svc_confidence.mia_efficacy": 0.1}, True),
    ({"mia.lira_online.auc": 0.1}, False),         # not a configured attack
    ({"mia_auc_loss_threshold": 0.1}, False),      # the old name
    ({"mia.loss_threshold": 0.1}, False),          # no metric
])
def test_gate_metrics_must_name_a_configured_attack(tolerances, ok):
    params = _params(gate={"tolerances": tolerances})
    if ok:
        check_params(params)
    else:
        with pytest.raises(ConfigError, match="gate.tolerances: unknown metric"):
            check_params(params)


def test_attack_options_must_belong_to_a_configured_attack():
    with pytest.raises(ConfigError, match="verify.attack_options.lira_online"):
        check_params(_params(verify={"attack_options": {"lira_online": {}}}))


def test_a_refused_metric_in_the_gate_fails_its_check():
    from unlearn.verification import apply_gate

    refused = {"mia.loss_threshold.tpr_at_fpr_0.001": "rests on 0.45 false positives"}
    result = apply_gate({"test_acc": 0.9}, {"test_acc": 0.9},
                        {"test_acc": 0.1, "mia.loss_threshold.tpr_at_fpr_0.001": 0.1}, refused=refused)
    assert not result.passed and "refused: rests on 0.45" in result.failures()[0]
