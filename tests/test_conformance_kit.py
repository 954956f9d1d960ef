"""The kit catches each deliberate bug with the check named for it, and its API (parametrising,
skipping, reporting every failure) works as documented."""

import numpy as np
import pytest

from broken_plugins import (
    BROKEN, GOOD, CentresInPlace, CentresKnowingly, GoodBackbone, GoodOffline, GoodOnline, ShufflesIds,
    UnseededSubsample, WrongShape,
)
from dcx.core.errors import ContractError
from dcx.testing import CHECKS, check_backbone, check_clusterer, check_plugin, checks, get, parametrize_with_checks
from dcx.testing.data import same_partition
from fake_plugins import NotAPlugin


@parametrize_with_checks(GOOD)
def test_good_plugins_pass_every_check(plugin, check):
    check(plugin)


@pytest.mark.parametrize("plugin, name", BROKEN, ids=[f"{p.__name__}-{n}" for p, n in BROKEN])
def test_each_deliberate_bug_is_caught_by_its_named_check(plugin, name):
    check = get(name)
    assert check in list(checks(plugin)), f"{name} does not apply to {plugin.__name__}"
    with pytest.raises(AssertionError) as err:
        check(plugin)
    message = str(err.value)
    assert message.startswith(f"{name} failed for "), message
    assert check.rule in message


@pytest.mark.parametrize("name", ["check_fit_deterministic", "check_state_dict_round_trip"])
def test_an_unseeded_subsample_fails_the_determinism_checks_every_time(name):
    """6,000 rows in overlapping clusters: any two subsets of 5,000 group some rows differently."""
    for _ in range(20):
        with pytest.raises(AssertionError, match="grouped the rows differently"):
            get(name)(UnseededSubsample)


def test_determinism_is_judged_on_the_grouping_then_on_the_ids():
    a = np.array([0, 0, 1, 1, 2])
    assert same_partition(a, np.array([2, 2, 0, 0, 1])) and not same_partition(a, np.array([0, 0, 1, 2, 2]))
    assert not same_partition(a, np.array([0, 0, 0, 1, 1])) and not same_partition(np.array([0, 0, 0, 1, 1]), a)
    with pytest.raises(AssertionError, match="grouped the rows alike but numbered the clusters differently"):
        get("check_fit_deterministic")(ShufflesIds)


def test_contract_errors_from_the_plugin_become_assertion_errors():
    with pytest.raises(AssertionError, match="check_fit_returns_partition failed for wrongshape") as err:
        get("check_fit_returns_partition")(WrongShape)
    assert isinstance(err.value.__cause__, ContractError)


def test_check_functions_report_every_failure_by_name():
    with pytest.raises(AssertionError) as err:
        check_clusterer(CentresInPlace)
    message = str(err.value)
    assert message.startswith("2 conformance check(s) failed for centresinplace")
    assert "check_fit_does_not_modify_input" in message and "check_fit_accepts_read_only_input" in message


def test_kinds_are_enforced_by_the_kind_checks():
    with pytest.raises(AssertionError, match="goodbackbone is not a clusterer"):
        check_clusterer(GoodBackbone)
    with pytest.raises(AssertionError, match="check_plugin_class failed for NotAPlugin"):
        check_plugin(NotAPlugin)
    check_backbone(GoodBackbone)


def test_a_plugin_opts_out_of_checks_it_knowingly_fails():
    with pytest.raises(AssertionError, match="1 conformance check"):
        check_clusterer(CentresKnowingly)
    check_clusterer(CentresKnowingly, skip={"check_fit_accepts_read_only_input": "never given memmaps"})
    with pytest.raises(ValueError, match="unknown check.*check_nonsense"):
        check_clusterer(GoodOffline, skip={"check_nonsense": "typo"})
    mark = parametrize_with_checks([CentresKnowingly])
    params = {p.id: p for p in mark.args[1]}
    skipped = params["centresknowingly-check_fit_does_not_modify_input"]
    assert skipped.marks[0].name == "skip" and "save memory" in skipped.marks[0].kwargs["reason"]
    assert not params["centresknowingly-check_fit_deterministic"].marks


def test_each_plugin_gets_the_checks_of_its_kind():
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names))
    online = {c.name for c in checks(GoodOnline)}
    assert "check_online_gradients" in online and "check_fit_deterministic" not in online
    assert "check_k_option" in online and "check_backbone_build" not in online
    assert "check_fit_recovers_planted_clusters" not in {c.name for c in checks(__import__("broken_plugins").SelaLike)}
    options_checks = {"check_options_declared", "check_unknown_option_rejected"}
    assert options_checks <= {c.name for c in checks(GoodBackbone)}
