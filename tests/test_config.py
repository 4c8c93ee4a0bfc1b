"""Configuration: typed, strict, errors naming the key."""

from __future__ import annotations

import pytest

from gateway.config import DATABASE_URL_ENV, load_config, parse_config, split_listen
from gateway.errors import ConfigError


def test_defaults_and_a_full_file():
    c = parse_config("")
    assert c.http.listen == "127.0.0.1:8080" and c.data_dir == "./.smsgw" and c.database.url == ""
    c = parse_config(
        'data_dir = "/var/lib/smsgw"\n[database]\nurl = "postgresql://u@db/sms"\n'
        '[http]\nlisten = "0.0.0.0:0"\nmax_recipients = 50\n[intake]\nmax_rows = 100\n'
        '[admin]\nlisten = "127.0.0.1:8081"\ntoken = "t"\n'
    )
    assert c.data_dir == "/var/lib/smsgw" and c.http.max_recipients == 50 and c.intake.max_rows == 100
    assert split_listen(c.http.listen) == ("0.0.0.0", 0)


@pytest.mark.parametrize(
    "text, named",
    [
        ('[http]\nlisen = "x"', "lisen"),
        ('[http]\nlisten = "nope"', "$.http.listen"),
        ('[http]\nmax_recipients = "many"', "$.http.max_recipients"),
        ('[http]\nmax_recipients = 0', "$.http.max_recipients"),
        ("[intake]\nmax_delay = 5", "$.intake.max_delay"),
        ('[[cmpp]]\nname = "a"', "$.cmpp[0]"),
        ('[[modems]]\nname = "m1"\ndevice = "/dev/x"\noperators = ["vodafone"]', "$.modems[0].operators[0]"),
        ("[retention]\ndays = -1", "$.retention.days"),
        ("colour = 1", "colour"),
        ("[http", "TOML"),
    ],
)
def test_errors_name_the_key(text, named):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "smsgw.toml")
    assert named in str(info.value) and "smsgw.toml" in str(info.value)


def test_port_range_is_checked():
    with pytest.raises(ConfigError, match="http.listen"):
        parse_config('[http]\nlisten = "127.0.0.1:70000"')


def test_env_overrides_database_url(monkeypatch, tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[database]\nurl = "postgresql://file/db"\n')
    assert load_config(p).database_url == "postgresql://file/db"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://env/db")
    assert load_config(p).database_url == "postgresql://env/db"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "absent.toml")


def test_channel_tables_as_documented():
    c = parse_config(
        '[[cmpp]]\nname = "cmcc-1"\nhost = "127.0.0.1"\nport = 7890\nversion = "3.0"\nsp_id = "901234"\n'
        'secret = "s3cret"\nservice_number = "10658888"\nconnections = 1\nwindow = 16\nrate = 200\n'
        'operators = ["cmcc"]\n'
        '[[modems]]\nname = "m1"\ndevice = "/dev/ttyUSB0"\noperators = ["cucc", "ctcc"]\n'
        'rate_per_minute = 6\ndaily_quota = 500\npin = ""\n')
    assert c.cmpp[0].window == 16 and c.cmpp[0].operators == ["cmcc"] and c.modems[0].daily_quota == 500
    with pytest.raises(ConfigError, match="repeated: x"):
        parse_config('[[modems]]\nname = "x"\ndevice = "/d"\noperators = ["cucc"]\n'
                     '[[modems]]\nname = "x"\ndevice = "/e"\noperators = ["cucc"]\n')


def test_merchants_table_and_its_uniqueness():
    ok = parse_config(b'[[merchants]]\nname = "mall"\naccount = "mall"\nservice_number = "10658888001"\n'
                      b'signature = "\xe3\x80\x90\xe5\x95\x86\xe5\x9c\xba\xe3\x80\x91"\n')
    assert ok.merchants[0].service_number == "10658888001" and ok.merchants[0].signature == "【商场】"
    with pytest.raises(ConfigError, match="merchants.service_number must be unique"):
        parse_config(b'[[merchants]]\nname = "a"\naccount = "a"\nservice_number = "1065"\n'
                     b'[[merchants]]\nname = "b"\naccount = "b"\nservice_number = "1065"\n')
    with pytest.raises(ConfigError, match="service_number"):
        parse_config(b'[[merchants]]\nname = "a"\naccount = "a"\nservice_number = "abc"\n')


def test_modem_direct_routing_key_reaches_the_pool():
    from gateway.modem_channel import ModemChannel

    c = parse_config('[[modems]]\nname = "m1"\ndevice = "/dev/ttyUSB0"\noperators = ["cucc"]\ndirect_routing = true\n'
                     '[[modems]]\nname = "m2"\ndevice = "/dev/ttyUSB1"\noperators = ["cucc"]\n')
    assert [m.direct_routing for m in c.modems] == [True, None]
    pool = ModemChannel(c.modems).pool
    specs = {slot.spec.name: slot.spec for slot in pool._slots.values()}
    assert specs["m1"].direct_routing is True and specs["m2"].direct_routing is None
    with pytest.raises(ConfigError, match=r"\$\.modems\[0\]\.direct_routing"):
        parse_config('[[modems]]\nname = "m1"\ndevice = "/d"\noperators = ["cucc"]\ndirect_routing = "yes"\n')
