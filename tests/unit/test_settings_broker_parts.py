"""BROKER_HOST + BROKER_USER + BROKER_PASSWORD: a broker URL assembled from its parts.

Render's Blueprint hands a private service's host and another service's generated password
as separate variables and cannot join strings, so settings build the amqp:// URL.
"""

from __future__ import annotations

import pytest
from kombu import Connection

from libs.common.settings import SettingsError, load

# What Render's generateValue makes: base64, so "/", "+" and "=" are likely.
PASSWORD = "a/b+c=d@e:f%g?h#i"


def test_parts_make_an_amqp_url_with_quoted_credentials() -> None:
    s = load({"BROKER_HOST": "rabbit-x7", "BROKER_USER": "con veyor", "BROKER_PASSWORD": PASSWORD})
    assert not s.embedded
    assert s.broker_url == "amqp://con%20veyor:a%2Fb%2Bc%3Dd%40e%3Af%25g%3Fh%23i@rabbit-x7:5672/"
    connection = Connection(s.broker_url)  # what the broker layer will make of it
    assert (connection.hostname, connection.port) == ("rabbit-x7", 5672)
    assert (connection.userid, connection.password) == ("con veyor", PASSWORD)
    assert connection.virtual_host == "/"


@pytest.mark.parametrize(
    ("host", "netloc"),
    [("rabbit:5673", "rabbit:5673"), ("10.0.0.7", "10.0.0.7:5672"), ("[::1]:5672", "[::1]:5672")],
)
def test_host_may_carry_a_port(host: str, netloc: str) -> None:
    s = load({"BROKER_HOST": host, "BROKER_USER": "u", "BROKER_PASSWORD": "p"})
    assert s.broker_url == f"amqp://u:p@{netloc}/"


def test_host_alone_means_no_credentials() -> None:
    assert load({"BROKER_HOST": "rabbit"}).broker_url == "amqp://rabbit:5672/"


def test_broker_url_wins_over_the_parts() -> None:
    env = {"BROKER_URL": "sqs://", "BROKER_HOST": "rabbit", "BROKER_USER": "u"}
    assert load(env).broker_url == "sqs://"


def test_blank_broker_url_falls_back_to_the_parts() -> None:
    env = {"BROKER_URL": " ", "BROKER_HOST": "rabbit", "BROKER_USER": "u", "BROKER_PASSWORD": "p"}
    assert load(env).broker_url == "amqp://u:p@rabbit:5672/"


def test_no_parts_is_still_the_embedded_all_in_one() -> None:
    assert load({"BROKER_HOST": "", "BROKER_USER": " "}).embedded


@pytest.mark.parametrize(
    "host", ["amqp://rabbit", "rabbit/vhost", "u:p@rabbit", "rabbit:0", "rabbit:99999", ":5672"]
)
def test_bad_host_names_the_variable(host: str) -> None:
    with pytest.raises(SettingsError, match=r"^BROKER_HOST: "):
        load({"BROKER_HOST": host, "BROKER_USER": "u", "BROKER_PASSWORD": "p"})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BROKER_HOST": "rabbit", "BROKER_USER": "u"}, "BROKER_PASSWORD"),
        ({"BROKER_HOST": "rabbit", "BROKER_PASSWORD": "p"}, "BROKER_USER"),
        ({"BROKER_USER": "u", "BROKER_PASSWORD": "p"}, "BROKER_USER"),
        ({"BROKER_PASSWORD": "p"}, "BROKER_PASSWORD"),
    ],
)
def test_incomplete_parts_name_the_missing_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env)
    assert str(caught.value).startswith(f"{named}: ")
    assert "\n" not in str(caught.value)
