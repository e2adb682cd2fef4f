"""Scenario files: the shipped ones load and boot; mixes are seeded; bad files are refused by key."""


import pytest

from iommu_core.scenarios.files import Scenario, ScenarioError, load_scenario, shipped
from iommu_core.xen.host import Host

MIB = 1 << 20

HEAD = """
[scenario]
name = "t"
board = "h3"
dom0_mem_mib = 512
"""


def write(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_shipped_names():
    assert set(shipped()) == {"h3", "h3-fleet", "m3w", "qemu-virt", "server", "small-h3"}
    assert all(p.is_file() and p.suffix == ".toml" for p in shipped().values())


@pytest.mark.parametrize("name", ["h3", "m3w", "small-h3"])
def test_shipped_scenario_boots_with_the_invariant_on(name):
    s = load_scenario(name)
    assert isinstance(s, Scenario) and s.name == name and s.specs[0].kind == "dom0"
    assert s.specs[0].ram_bytes == s.dom0_mem
    records = Host(s.board, s.host_config(policy="eager", api="blocks", check=True)).run(list(s.specs))
    assert len(records) == len(s.specs)
    assert all(r["mismatches"] == 0 for r in records)
    assert sum(r["assign_refused_context"] for r in records) == 0


def test_the_h3_fleet_outgrows_the_ipmmu_contexts():
    """10 guests with a device each and dom0: more domains than contexts, some are refused."""
    s = load_scenario("h3-fleet")
    # declared is built like XT (issue 13 row 6): table and context at creation, 8 usable (context 0
    # not reserved): dom0 and 7 guests hold one, the other 3 creations are refused (no assignment is).
    records = Host(s.board, s.host_config(policy="declared", api="batched", check=True)).run(list(s.specs))
    assert all(r["mismatches"] == 0 for r in records)
    assert sum(1 for r in records if r["devices"]) == s.board.ipmmu_contexts == 8
    assert sum(r["create_refused_context"] for r in records) == len(s.specs) - 8 == 3
    assert sum(r["assign_refused_context"] for r in records) == 0
    # shared (upstream): context 0 reserved, 7 usable, taken at assignment: 4 assignments refused.
    records = Host(s.board, s.host_config(policy="shared", api="batched", check=True)).run(list(s.specs))
    usable = s.board.ipmmu_contexts - s.board.reserved_contexts
    assert sum(1 for r in records if r["devices"]) == usable
    assert sum(r["assign_refused_context"] for r in records) == len(s.specs) - usable == 4


def test_server_loads_and_boots_with_the_invariant():
    s = load_scenario("server")
    assert s.board.name == "server" and len(s.board.masters) == 64 and s.board.ram_bytes == 512 << 30
    assert len(s.specs) == 101 and s.dom0_mem == 4096 * MIB
    assert {x.ram_bytes // MIB for x in s.specs[1:]} <= {256, 512, 1024, 2048, 4096, 8192}
    assert 5 <= sum(bool(x.devices) for x in s.specs[1:]) <= 40
    records = Host(s.board, s.host_config(policy="eager", api="blocks", check=True)).run(list(s.specs))
    assert len(records) == 101 and all(r["mismatches"] == 0 for r in records)


def test_load_by_path_equals_load_by_name():
    assert load_scenario(str(shipped()["h3"]), seed=3) == load_scenario("h3", seed=3)


MIX = HEAD + """
[[domain]]
name = "net"
kind = "driver"
ram_mib = 128
passthrough = true
devices = ["etheravb"]

[[mix]]
name = "fleet"
count = 12
ram_mib = [64, 128, 256]
device_share = 0.3
hotplug_share = 0.3
declared_share = 0.5
grant_pages = [0, 256]
balloon_share = 0.3
destroy_share = 0.2
"""


def test_a_mix_is_deterministic_for_a_seed_and_differs_for_another(tmp_path):
    p = write(tmp_path, MIX)
    a, b, c = load_scenario(p, seed=1), load_scenario(p, seed=1), load_scenario(p, seed=2)
    assert a == b and a.specs != c.specs
    fleet = a.specs[2:]
    assert [x.name for x in fleet] == [f"fleet-{k}" for k in range(1, 13)]
    assert all(x.balloon_bytes in (0, x.ram_bytes // 4) for x in fleet)
    assert all(x.passthrough for x in fleet if x.devices)
    # devices come from the board's free ones in board order, each to one domain only
    given = [d for x in fleet for d in (*x.devices, *x.hotplug)]
    free = [m.name for m in a.board.masters if m.name != "etheravb"]
    assert given == free[:len(given)]


def test_mix_pool_runs_out_and_the_rest_get_none(tmp_path):
    p = write(tmp_path, HEAD + """
[[mix]]
name = "m"
count = 5
ram_mib = 64
device_share = 1.0
devices = ["sdhi2", "sdhi0"]
""")
    s = load_scenario(p)
    assert [x.devices for x in s.specs[1:]] == [("sdhi2",), ("sdhi0",), (), (), ()]
    assert all(x.passthrough for x in s.specs[1:])


def test_count_makes_numbered_alike_domains(tmp_path):
    s = load_scenario(write(tmp_path, HEAD + """
[[domain]]
name = "g"
kind = "guest"
ram_mib = 64
count = 3
"""))
    assert [x.name for x in s.specs] == ["dom0", "g-1", "g-2", "g-3"]


def test_board_options_reach_the_profile(tmp_path):
    s = load_scenario(write(tmp_path, """
[scenario]
name = "srv"
board = "server"
[board_options]
ram_gib = 8
functions = 2
"""))
    assert s.board.ram_bytes == 8 << 30 and len(s.board.masters) == 2 and s.specs[0].ram_bytes == 1 << 30


def err(tmp_path, text, *parts):
    p = write(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert msg.startswith(p + ": "), msg
    for part in parts:
        assert part in msg, msg
    return msg


def test_unknown_key_and_table(tmp_path):
    err(tmp_path, HEAD + "colour = 'red'\n", "scenario.colour", "unknown key", "'red'")
    err(tmp_path, HEAD + "[extras]\nx = 1\n", ": extras:", "unknown table", "{'x': 1}")
    err(tmp_path, HEAD + "[[domain]]\nname='a'\nkind='guest'\nram_mib=64\nram=1\n", "domain[0].ram", "(got 1)")
    err(tmp_path, HEAD + "[[mix]]\nname='a'\ncount=2\nram_mib=64\nshare=0.1\n", "mix[0].share", "(got 0.1)")
    err(tmp_path, HEAD + "[board_options]\nram_gib = 4\n", "board_options.ram_gib", "(got 4)")


def test_bad_type(tmp_path):
    err(tmp_path, HEAD + "[[domain]]\nname='a'\nkind='guest'\nram_mib='64'\n",
        "domain[0].ram_mib", "must be an integer", "(got '64')")
    err(tmp_path, HEAD + "[[domain]]\nname='a'\nkind='guest'\nram_mib=64\npassthrough=1\n",
        "domain[0].passthrough", "(got 1)")
    err(tmp_path, HEAD + "[[mix]]\nname='a'\ncount=2\nram_mib=[64, 'x']\n", "mix[0].ram_mib[1]", "(got 'x')")
    err(tmp_path, HEAD + "[[domain]]\nname='a'\nkind='pet'\nram_mib=64\n", "domain[0].kind", "(got 'pet')")


def test_negative_or_out_of_range_sizes(tmp_path):
    ok = "[[domain]]\nname='a'\nkind='guest'\nram_mib=64\n"
    err(tmp_path, HEAD + ok + "[[domain]]\nname='b'\nkind='guest'\nram_mib=-64\n",
        "domain[1].ram_mib", "at least 1", "(got -64)")
    err(tmp_path, HEAD + ok + "balloon_mib = 128\n", "domain[0].balloon_mib", "(got 128)")
    err(tmp_path, HEAD + "[[mix]]\nname='a'\ncount=2\nram_mib=64\ndevice_share=1.5\n",
        "mix[0].device_share", "(got 1.5)")
    err(tmp_path, HEAD.replace("512", "-1"), "scenario.dom0_mem_mib", "(got -1)")


def test_unknown_device(tmp_path):
    err(tmp_path, HEAD + "[[domain]]\nname='a'\nkind='guest'\nram_mib=64\nhotplug=['sdhi0', 'gpu']\n",
        "domain[0].hotplug[1]", "no DMA master", "(got 'gpu')")


def test_a_device_given_twice(tmp_path):
    dom = "[[domain]]\nname='{}'\nkind='driver'\nram_mib=64\npassthrough=true\ndevices=['etheravb']\n"
    err(tmp_path, HEAD + dom.format("a") + dom.format("b"),
        "domain[1].devices[0]", "already given to domain[0] ('a')", "(got 'etheravb')")
    err(tmp_path, HEAD + dom.format("a") + "[[mix]]\nname='m'\ncount=2\nram_mib=64\ndevices=['etheravb']\n",
        "mix[0].devices[0]", "(got 'etheravb')")
    err(tmp_path, HEAD + "[[domain]]\nname='a'\nkind='guest'\nram_mib=64\ncount=2\ndevices=['sdhi0']\n",
        "domain[0].devices", "count = 1", "(got ['sdhi0'])")


def test_unknown_board(tmp_path):
    err(tmp_path, HEAD.replace('"h3"', '"rpi4"'), "scenario.board", "unknown board", "(got 'rpi4')")


def test_missing_scenario_table(tmp_path):
    err(tmp_path, "[[domain]]\nname='a'\nkind='guest'\nram_mib=64\n", ": scenario:", "missing table",
        "(got ['domain'])")
    err(tmp_path, "[scenario]\nname='x'\n", "scenario.board", "missing key")


def test_a_file_that_fails_late_returns_nothing(tmp_path):
    # everything reads well until the last mix's domain names collide with an explicit domain,
    # and then the whole host no longer fits: either way no Scenario comes back.
    late = MIX + "[[domain]]\nname='fleet-3'\nkind='guest'\nram_mib=64\n"
    result = None
    with pytest.raises(ScenarioError) as e:
        result = load_scenario(write(tmp_path, late))
    assert result is None
    assert "mix[0].name" in str(e.value) and "(got 'fleet-3')" in str(e.value)
    big = MIX + "[[domain]]\nname='huge'\nkind='large'\nram_mib=3500\n"
    with pytest.raises(ScenarioError) as e:
        result = load_scenario(write(tmp_path, big))
    assert result is None
    assert "domain + mix" in str(e.value) and "board h3" in str(e.value) and "MiB)" in str(e.value)


def test_not_toml_and_no_such_file(tmp_path):
    err(tmp_path, "[scenario\n", "TOML")
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(str(tmp_path / "missing.toml"))
    with pytest.raises(ScenarioError, match="seed"):
        load_scenario("h3", seed=-1)


def test_a_scenario_can_take_its_board_from_a_device_tree(tmp_path):
    import shutil

    from iommu_core.scenarios.devicetree import H3_DTS
    from iommu_core.xen.host import Host

    shutil.copy(H3_DTS, tmp_path / "board.dts")
    (tmp_path / "s.toml").write_text('[scenario]\nname = "dt"\nboard = "board.dts"\ndom0_mem_mib = 256\n\n'
                                     '[[domain]]\nname = "d"\nkind = "driver"\nram_mib = 64\npassthrough = true\n'
                                     'devices = ["sdhi0"]\n')
    s = load_scenario(str(tmp_path / "s.toml"))
    assert s.board.ram_bytes == 3968 << 20
    records = Host(s.board, s.host_config(policy="eager", api="blocks")).run(list(s.specs))
    assert records[1]["devices"] == 1 and records[1]["mismatches"] == 0
    (tmp_path / "bad.toml").write_text('[scenario]\nname = "dt"\nboard = "missing.dtb"\n')
    with pytest.raises(ScenarioError, match=r"bad.toml: scenario.board: cannot read the device tree"):
        load_scenario(str(tmp_path / "bad.toml"))


def test_host_config_carries_the_scenario_settings():
    cfg = load_scenario("small-h3").host_config(policy="lazy")
    assert cfg.dom0_mem == 1 << 30 and cfg.arrival_spread_ns == 1e6 and cfg.policy == "lazy"
