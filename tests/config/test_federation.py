"""The federation spec: parsing, and every error naming its file, field and line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedsilo.config import Classification, FederationSpec, load_federation
from fedsilo.errors import ConfigError

MARK = "#!"
DEMO_SPEC = (Path(__file__).parent / "demo_federation.yaml").read_text(encoding="utf-8")
WriteSpec = Callable[[str], Path]


def _marked_line(text: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if MARK in line:
            return number
    return None


def _edit(old: str, new: str) -> str:
    assert old in DEMO_SPEC, old
    return DEMO_SPEC.replace(old, new, 1)


# Each case: the spec text (the line that must be reported carries "#!"), the dotted field
# the error must name, and words the message must contain.
ERROR_CASES = {
    "unknown top-level key": (
        DEMO_SPEC + "colour: red  #!\n",
        "colour",
        "unknown key 'colour'; allowed keys: name, orchestrator, silos, submitters",
    ),
    "unknown nested key": (
        _edit(
            "    storage: {root: storage/silo-b}",
            "    storage: {root: storage/silo-b, colour: red}  #!",
        ),
        "silos.1.storage.colour",
        "unknown key 'colour'; allowed keys: root",
    ),
    "unknown key in a dataset": (
        _edit("classification: sensitive}", "classification: sensitive, owner: me}  #!"),
        "silos.0.datasets.0.owner",
        "unknown key 'owner'; allowed keys: name, classification",
    ),
    "unknown key in the orchestrator": (
        _edit("  port: 8443\n", "  port: 8443\n  tls: false  #!\n"),
        "orchestrator.tls",
        "unknown key 'tls'; allowed keys: host, port, storage, compute",
    ),
    "duplicate silo name": (
        _edit("  - name: silo-b", "  - name: silo-a  #!"),
        "silos.1.name",
        "duplicate silo name 'silo-a'",
    ),
    "two silos share a storage root": (
        _edit("{root: storage/silo-b}", "{root: storage/silo-a}  #!"),
        "silos.1.storage.root",
        "silo 'silo-a'",
    ),
    "storage roots equal once normalised": (
        _edit("{root: storage/silo-b}", "{root: ./storage/x/../silo-a/}  #!"),
        "silos.1.storage.root",
        "is the same folder as the storage root of silo 'silo-a'",
    ),
    "storage root nested inside another silo's": (
        _edit("{root: storage/silo-b}", "{root: storage/silo-a/inner}  #!"),
        "silos.1.storage.root",
        "is nested with the storage root of silo 'silo-a'",
    ),
    "silo storage inside the orchestrator's": (
        _edit("{root: storage/orchestrator}", "{root: storage}").replace(
            "{root: storage/silo-a}", "{root: storage/silo-a}  #!"
        ),
        "silos.0.storage.root",
        "the orchestrator",
    ),
    "two silos share a compute": (
        _edit("{name: silo-b-cpu}", "{name: silo-a-cpu}  #!"),
        "silos.1.compute.name",
        "shares compute 'silo-a-cpu' with silo 'silo-a'",
    ),
    "silo shares the orchestrator's compute": (
        _edit("{name: silo-b-cpu}", "{name: orchestrator-cpu}  #!"),
        "silos.1.compute.name",
        "with the orchestrator",
    ),
    "a second compute shares another silo's name": (
        _edit(
            "    compute: {name: silo-b-cpu}\n",
            "    compute: {name: silo-b-cpu}\n"
            "    computes:\n      - {name: silo-a-cpu, kind: accel}  #!\n",
        ),
        "silos.1.computes.0.name",
        "shares compute 'silo-a-cpu' with silo 'silo-a'",
    ),
    "two computes of one kind in a silo": (
        _edit(
            "    compute: {name: silo-b-cpu}\n",
            "    compute: {name: silo-b-cpu}\n    computes:\n      - {name: silo-b-2}  #!\n",
        ),
        "silos.1.computes.0.kind",
        "two computes of kind 'cpu' (silo-b-cpu and silo-b-2)",
    ),
    "a compute may not set the sandbox's variables": (
        _edit(
            "{name: silo-b-cpu}",
            "{name: silo-b-cpu, environment: {PATH: /evil}}  #!",
        ),
        "silos.1.compute.environment.PATH",
        "may not set PATH",
    ),
    "a compute may not set what the grant sets": (
        _edit(
            "{name: silo-b-cpu}",
            "{name: silo-b-cpu, environment: {CUDA_VISIBLE_DEVICES: '0'}}  #!",
        ),
        "silos.1.compute.environment.CUDA_VISIBLE_DEVICES",
        "declare 'gpus' on the compute instead",
    ),
    "a gpu compute without devices": (
        _edit("{name: silo-b-cpu}", "{name: silo-b-gpu, kind: gpu}  #!"),
        "silos.1.compute.gpus",
        "is of kind 'gpu' but lists no devices",
    ),
    "a size that is not one": (
        _edit("{name: silo-b-cpu}", "{name: silo-b-cpu, memory: 8 gigs}  #!"),
        "silos.1.compute.memory",
        "'8 gigs' is not a size; write it like 8GiB",
    ),
    "a duration that is not one": (
        _edit("{name: silo-b-cpu}", "{name: silo-b-cpu, max_step_seconds: soon}  #!"),
        "silos.1.compute.max_step_seconds",
        "'soon' is not a duration",
    ),
    "one job may not take more than the compute has": (
        _edit(
            "{name: silo-b-cpu}",
            "{name: silo-b-cpu, memory: 4GiB, per_job: {memory: 8GiB}}  #!",
        ),
        "silos.1.compute.per_job.memory",
        "lets one job take memory 8 GiB, more than the 4 GiB it has",
    ),
    "a compute of one node": (
        _edit(
            "{name: silo-b-cpu}",
            "{name: silo-b-cpu, nodes: [{name: n0, address: 10.0.0.1, interface: eth1, "
            "job_addresses: [10.0.0.11]}]}  #!",
        ),
        "silos.1.compute.nodes",
        "lists one node",
    ),
    "two nodes with one job address": (
        _edit(
            "{name: silo-b-cpu}",
            "{name: silo-b-cpu, nodes: [{name: n0, address: 10.0.0.1, interface: eth1, "
            "job_addresses: [10.0.0.11]}, {name: n1, address: 10.0.0.2, interface: eth1, "
            "job_addresses: [10.0.0.11]}]}  #!",
        ),
        "silos.1.compute.nodes.1.job_addresses",
        "repeats address 10.0.0.11 (also node 'n0')",
    ),
    "a node address that is not one": (
        _edit(
            "{name: silo-b-cpu}",
            "{name: silo-b-cpu, nodes: [{name: n0, address: here, interface: eth1, "
            "job_addresses: [10.0.0.11]}, {name: n1, address: 10.0.0.2, interface: eth1, "
            "job_addresses: [10.0.0.12]}]}  #!",
        ),
        "silos.1.compute.nodes.0.address",
        "IP",
    ),
    "too few processes": (
        _edit("{name: silo-b-cpu}", "{name: silo-b-cpu, processes: 2}  #!"),
        "silos.1.compute.processes",
        "greater than or equal to 8",
    ),
    "bad classification word": (
        _edit("classification: sensitive}", "classification: secret}  #!"),
        "silos.0.datasets.0.classification",
        "'secret' is not a classification; use one of: sensitive, intermediate, eyes_on",
    ),
    "duplicate dataset in a silo": (
        _edit(
            "      - {name: digits-train, classification: sensitive}\n",
            "      - {name: digits-train, classification: sensitive}\n"
            "      - {name: digits-train, classification: eyes_on}  #!\n",
        ),
        "silos.0.datasets.1.name",
        "declares dataset 'digits-train' twice",
    ),
    "submitter named like a silo": (
        _edit("submitters: [submitter]", "submitters: [submitter, silo-b]  #!"),
        "submitters.1",
        "participant name 'silo-b' is used twice",
    ),
    "submitter named orchestrator": (
        _edit("submitters: [submitter]", "submitters: [orchestrator]  #!"),
        "submitters.0",
        "participant name 'orchestrator' is used twice",
    ),
    "submitter twice": (
        _edit("submitters: [submitter]", "submitters:\n  - submitter\n  - submitter  #!"),
        "submitters.1",
        "participant name 'submitter' is used twice",
    ),
    "silo named orchestrator": (
        _edit("  - name: silo-b", "  - name: orchestrator  #!"),
        "silos.1.name",
        "reserved for the orchestrator",
    ),
    "duplicate YAML key": (
        _edit(
            "    compute: {name: silo-b-cpu}\n",
            "    compute: {name: silo-b-cpu}\n    name: x  #!\n",
        ),
        "silos.1.name",
        "duplicate key 'name' (first given on line 13)",
    ),
    "port out of range": (
        _edit("  port: 8443", "  port: 70000  #!"),
        "orchestrator.port",
        "70000",
    ),
    "missing required key": (
        _edit("    compute: {name: silo-b-cpu}\n", "").replace(
            "  - name: silo-b", "  - name: silo-b  #!"
        ),
        "silos.1.compute",
        "missing required key 'compute'",
    ),
    "silo name with capitals": (
        _edit("  - name: silo-b", "  - name: Silo_B  #!"),
        "silos.1.name",
        "'Silo_B' is not a valid name",
    ),
    "no silos": (
        _edit(
            DEMO_SPEC[DEMO_SPEC.index("silos:") : DEMO_SPEC.index("submitters")], "silos: []  #!\n"
        ),
        "silos",
        "'silos' needs at least 1 entry",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_each_spec_error_names_file_field_and_line(case: str, write_spec: WriteSpec) -> None:
    text, field, words = ERROR_CASES[case]
    path = write_spec(text)
    with pytest.raises(ConfigError) as caught:
        load_federation(path)
    error = caught.value
    line = _marked_line(text)
    assert line is not None
    assert (error.file, error.field, error.line) == (str(path), field, line)
    assert words in error.message
    assert f"{path}:{line}: field '{field}'" in str(error)


def test_yaml_syntax_error_names_its_line(write_spec: WriteSpec) -> None:
    text = _edit("  port: 8443", "  port: 8443: 1  #!")
    path = write_spec(text)
    with pytest.raises(ConfigError, match="invalid YAML") as caught:
        load_federation(path)
    assert (caught.value.file, caught.value.line) == (str(path), _marked_line(text))


@pytest.mark.parametrize(
    ("text", "words"),
    [("- a\n- b\n", "must be a mapping of keys, not a list"), ("", "the file is empty")],
)
def test_top_level_must_be_a_mapping(text: str, words: str, write_spec: WriteSpec) -> None:
    path = write_spec(text)
    with pytest.raises(ConfigError, match=words) as caught:
        load_federation(path)
    assert (caught.value.file, caught.value.line) == (str(path), 1)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="file not found") as caught:
        load_federation(missing)
    assert caught.value.file == str(missing)


def test_demo_spec_loads_into_frozen_models(demo_spec: Path) -> None:
    spec = load_federation(str(demo_spec))
    assert spec.name == "demo"
    assert spec.silo_names == ("silo-a", "silo-b")
    assert spec.orchestrator.port == 8443
    assert spec.silo("silo-a").datasets[0].classification is Classification.SENSITIVE
    assert spec.silo("silo-a").dataset("digits-train") is not None
    assert spec.silo("silo-b").dataset("digits-train") is None
    assert spec.submitters == ("submitter",)
    with pytest.raises(ValueError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]


def test_defaults_fill_host_port_and_submitter(write_spec: WriteSpec) -> None:
    text = DEMO_SPEC.replace("  host: 127.0.0.1\n  port: 8443\n", "").replace(
        "submitters: [submitter]\n", ""
    )
    spec = load_federation(write_spec(text))
    assert (spec.orchestrator.host, spec.orchestrator.port) == ("127.0.0.1", 8443)
    assert spec.submitters == ("submitter",)


def test_unknown_silo_lists_the_known_ones(demo_spec: Path) -> None:
    spec = load_federation(demo_spec)
    with pytest.raises(ConfigError, match="no silo 'silo-z'; its silos: silo-a, silo-b"):
        spec.silo("silo-z")


def test_specs_built_in_python_are_checked_too() -> None:
    silo = {"name": "a", "storage": {"root": "s"}, "compute": {"name": "c"}}
    with pytest.raises(ValueError, match="duplicate silo name 'a'"):
        FederationSpec.model_validate(
            {
                "name": "demo",
                "orchestrator": {"storage": {"root": "o"}, "compute": {"name": "o"}},
                "silos": [silo, {**silo, "compute": {"name": "d"}}],
            }
        )


def test_classification_order() -> None:
    ranks = [c.rank for c in (Classification.EYES_ON, Classification.INTERMEDIATE)]
    assert ranks == [0, 1]
    assert Classification.SENSITIVE.rank == 2
    assert (
        Classification.highest([Classification.EYES_ON, Classification.SENSITIVE])
        is Classification.SENSITIVE
    )
    assert (
        Classification.highest([Classification.INTERMEDIATE, Classification.EYES_ON])
        is Classification.INTERMEDIATE
    )
    assert Classification.highest([]) is Classification.EYES_ON
    assert Classification("eyes_on") is Classification.EYES_ON
    assert str(Classification.INTERMEDIATE) == "intermediate"


def test_aliases_are_reported_where_they_are_used(write_spec: WriteSpec) -> None:
    text = _edit("{name: silo-a-cpu}", "&cpu {name: silo-a-cpu}").replace(
        "    compute: {name: silo-b-cpu}", "    compute: *cpu  #!"
    )
    path = write_spec(text)
    with pytest.raises(ConfigError, match="shares compute 'silo-a-cpu'") as caught:
        load_federation(path)
    assert (caught.value.field, caught.value.line) == ("silos.1.compute.name", _marked_line(text))


def test_nested_aliases_do_not_explode(write_spec: WriteSpec) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write_spec("\n".join(levels) + "\n")
    with pytest.raises(ConfigError, match="unknown key 'a0'"):
        load_federation(path)


def test_public_api_is_exactly_all() -> None:
    import fedsilo.config

    public = {name for name in vars(fedsilo.config) if not name.startswith("_")}
    assert sorted(fedsilo.config.__all__) == sorted(public)
