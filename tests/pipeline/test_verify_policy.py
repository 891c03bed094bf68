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
        check_params(_params(verify={"attacks": ["loss_threshold", attack]}))
    assert "lira_offline" in str(info.value) and attack not in promotion_attacks()


def test_reference_attacks_need_reference_models():
    with pytest.raises(ConfigError, match="verify.references.count >= 2"):
        check_params(_params(verify={"references": {"count": 0}}))


@pytest.mark.parametrize("value, message", [
    ({"count": 3}, "even number"), ({"batched": "sometimes"}, "auto, always or never")])
def test_reference_settings_are_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        _params(verify={"references": value})


@pytest.mark.parametrize("attacks, message", [
    (["lira_offline", "no_such_attack"], "gate.attacks: unknown attack"),
    (["lira_online"], "gate.attacks: 'lira_online' cannot run at promotion time"),
])
def test_gated_attacks_are_validated_at_project_load(attacks, message):
    with pytest.raises(ConfigError, match=message):
        check_params(_params(gate={"attacks": attacks}))


def test_a_gated_attack_outside_verify_attacks_still_needs_references():
    params = _params(verify={"attacks": ["loss_threshold"], "references": {"count": 0}},
                     gate={"attacks": ["rmia_offline"]})
    with pytest.raises(ConfigError, match="gate.attacks: 'rmia_offline' needs reference models"):
        check_params(params)


def test_the_retired_fixed_tolerances_are_refused():
    with pytest.raises(ConfigError, match="tolerances"):
        _params(gate={"tolerances": {"test_acc": 0.03}})


def test_attack_options_must_belong_to_a_configured_attack():
    with pytest.raises(ConfigError, match="verify.attack_options.lira_online"):
        check_params(_params(verify={"attack_options": {"lira_online": {}}}))
