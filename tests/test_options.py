import pytest

from dcx.core.errors import OptionError
from dcx.core.options import Option, parse_assignments, resolve

OPTS = (
    Option("k", int, 10, min=1),
    Option("sigma", float, None, nullable=True, min=0.0),
    Option("backend", str, "auto", choices=("auto", "faiss", "torch")),
    Option("flag", bool, False),
)


def test_defaults_and_coercion_from_strings():
    got = resolve("p", OPTS, {"k": "30", "sigma": "0.2", "backend": "torch", "flag": "yes"})
    assert got == {"k": 30, "sigma": 0.2, "backend": "torch", "flag": True}
    assert resolve("p", OPTS, {})["sigma"] is None
    assert resolve("p", OPTS, {"sigma": "auto"})["sigma"] is None


@pytest.mark.parametrize(
    "given, words",
    [
        ({"k": "ten"}, ["p:", "'k'", "integer >= 1", "ten"]),
        ({"k": 0}, ["'k'", ">= 1"]),
        ({"k": 2.5}, ["'k'"]),
        ({"backend": "cuda"}, ["'backend'", "auto, faiss, torch"]),
        ({"flag": "maybe"}, ["'flag'", "true or false"]),
        ({"sigmaa": 1}, ["unknown option 'sigmaa'", "did you mean 'sigma'", "accepted: k, sigma, backend, flag"]),
    ],
)
def test_bad_values_name_plugin_option_and_accepted_values(given, words):
    with pytest.raises(OptionError) as err:
        resolve("p", OPTS, given)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_parse_assignments():
    assert parse_assignments(["kmeans.niter=30", "kmeans.k=5", "pic.sigma=0.2"]) == {
        "kmeans": {"niter": "30", "k": "5"}, "pic": {"sigma": "0.2"}}
    with pytest.raises(OptionError, match="PLUGIN.KEY=VALUE"):
        parse_assignments(["niter=3"])
