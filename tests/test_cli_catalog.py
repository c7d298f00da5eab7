"""`veil parties|tables|schema|demo`, `--version`, `--help`, formats and federation discovery.

Most checks run on the held-out federation (tests/fixtures/heldout: hospital, pharmacy, lab),
written from CONTRACT.md alone and sharing nothing with the bundled sample.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from veilql import __version__
from veilql.cli import main
from veilql.errors import ConfigError
from veilql.policies import find_federation
from veilql.policies.discovery import ENV_VAR, bundled_sample
from veilql.ui.formats import render


def veil(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """Run the CLI in-process."""
    return CliRunner().invoke(main, list(args), env=env)


def ok(*args: str, env: dict[str, str | None] | None = None) -> str:
    """Run the CLI, require success and an empty stderr, return stdout."""
    result = veil(*args, env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def spec(heldout: Path, scheme: str, rel: str) -> str:
    """The absolute connector spec the loader stores."""
    return f"{scheme}:{heldout.parent / rel}"


# ---- parties -----------------------------------------------------------------------------


def test_parties_all_formats(heldout: Path) -> None:
    """Every format carries the same rows."""
    rows = [
        ["hospital", "local", spec(heldout, "duckdb", "data/hospital.duckdb"), 1, True],
        ["pharmacy", "local", spec(heldout, "csv", "data/pharmacy"), 1, True],
        ["lab", "local", spec(heldout, "parquet", "data/lab"), 1, True],
    ]
    cols = ["party", "address", "connector", "tables", "compute"]
    f = str(heldout)
    assert json.loads(ok("parties", "-f", f, "--format", "json")) == {"columns": cols, "rows": rows}
    jsonl = [json.loads(line) for line in ok("parties", "-f", f, "--format", "jsonl").splitlines()]
    assert jsonl == [dict(zip(cols, r, strict=True)) for r in rows]
    parsed = list(csv.reader(io.StringIO(ok("parties", "-f", f, "--format", "csv"))))
    assert parsed == [cols] + [[r[0], r[1], r[2], "1", "true"] for r in rows]
    table = ok("parties", "-f", f).splitlines()
    assert table[0].split() == cols
    assert set(table[1]) == {"-", " "}
    assert [line.split() for line in table[2:]] == [[r[0], r[1], r[2], "1", "true"] for r in rows]
    assert ok("parties", "-f", f) == render(cols, rows, "table") + "\n"


# ---- tables ------------------------------------------------------------------------------

TABLE_COLS = ["party", "table", "privacy_unit", "max_rows_per_unit", "join_reveal", "columns",
              "kind"]
TABLE_ROWS = [
    ["hospital", "admissions", "patient_id", 4, "intersection", 5, "personal"],
    ["pharmacy", "prescriptions", "patient_id", 10, "none", 4, "personal"],
    ["lab", "results", "patient_id", 5, "none", 4, "personal"],
]


def test_tables_all_formats(heldout: Path) -> None:
    """All tables with a policy, and only those (hospital's staff table has none)."""
    f = str(heldout)
    assert json.loads(ok("tables", "-f", f, "--format", "json")) == {
        "columns": TABLE_COLS,
        "rows": TABLE_ROWS,
    }
    assert ok("tables", "-f", f, "--format", "csv") == (
        "party,table,privacy_unit,max_rows_per_unit,join_reveal,columns,kind\n"
        "hospital,admissions,patient_id,4,intersection,5,personal\n"
        "pharmacy,prescriptions,patient_id,10,none,4,personal\n"
        "lab,results,patient_id,5,none,4,personal\n"
    )
    assert ok("tables", "-f", f, "--format", "jsonl").splitlines()[2] == (
        '{"party": "lab", "table": "results", "privacy_unit": "patient_id", '
        '"max_rows_per_unit": 5, "join_reveal": "none", "columns": 4, "kind": "personal"}'
    )
    assert ok("tables", "-f", f) == (
        "party     table          privacy_unit  max_rows_per_unit  join_reveal   columns  kind\n"
        "--------  -------------  ------------  -----------------  ------------  -------  "
        "--------\n"
        "hospital  admissions     patient_id                    4  intersection        5  "
        "personal\n"
        "pharmacy  prescriptions  patient_id                   10  none                4  "
        "personal\n"
        "lab       results        patient_id                    5  none                4  "
        "personal\n"
    )


def test_tables_of_one_party(heldout: Path) -> None:
    """`veil tables PARTY` lists only that party's tables."""
    out = json.loads(ok("tables", "pharmacy", "-f", str(heldout), "--format", "json"))
    assert out["rows"] == [TABLE_ROWS[1]]
    result = veil("tables", "pharmasy", "-f", str(heldout))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "veil: error: no party 'pharmasy' in federation 'regional-health'\n"
        "hint: did you mean 'pharmacy'? parties are: hospital, pharmacy, lab\n"
    )


# ---- schema ------------------------------------------------------------------------------

SCHEMA_COLS = ["column", "type", "role", "decimals", "bounds", "values"]


def test_schema_all_formats(heldout: Path) -> None:
    """Columns with type (from the connector), role, decimals, bounds and group domain."""
    f = str(heldout)
    rows = [
        ["patient_id", "BIGINT", "key", 0, None, None],
        ["ward", "VARCHAR", "group", 0, None, ["cardiology", "oncology", "maternity", "emergency"]],
        ["age", "SMALLINT", "value", 0, [0, 110], None],
        ["stay_days", "INTEGER", "value", 0, [0, 60], None],
        ["cost", "DECIMAL(10,2)", "value", 2, [0, 250000], None],
    ]
    assert json.loads(ok("schema", "hospital.admissions", "-f", f, "--format", "json")) == {
        "columns": SCHEMA_COLS,
        "rows": rows,
        "party": "hospital",
        "table": "admissions",
        "privacy_unit": "patient_id",
        "max_rows_per_unit": 4,
        "join_reveal": "intersection",
    }
    assert ok("schema", "hospital.admissions", "-f", f, "--format", "csv").splitlines() == [
        "column,type,role,decimals,bounds,values",
        "patient_id,BIGINT,key,0,,",
        'ward,VARCHAR,group,0,,"[""cardiology"", ""oncology"", ""maternity"", ""emergency""]"',
        'age,SMALLINT,value,0,"[0, 110]",',
        'stay_days,INTEGER,value,0,"[0, 60]",',
        'cost,"DECIMAL(10,2)",value,2,"[0, 250000]",',
    ]
    lines = ok("schema", "hospital.admissions", "-f", f, "--format", "jsonl").splitlines()
    assert [json.loads(x) for x in lines] == [dict(zip(SCHEMA_COLS, r, strict=True)) for r in rows]
    assert ok("schema", "hospital.admissions", "-f", f).splitlines() == [
        "column      type           role   decimals  bounds       values",
        "----------  -------------  -----  --------  -----------  "
        "----------------------------------------------------",
        "patient_id  BIGINT         key           0  NULL         NULL",
        "ward        VARCHAR        group         0  NULL         "
        '["cardiology", "oncology", "maternity", "emergency"]',
        "age         SMALLINT       value         0  [0, 110]     NULL",
        "stay_days   INTEGER        value         0  [0, 60]      NULL",
        "cost        DECIMAL(10,2)  value         2  [0, 250000]  NULL",
    ]


def test_schema_csv_and_parquet_parties(heldout: Path) -> None:
    """Types come from CSV sniffing and Parquet metadata; explicit decimals win."""
    f = str(heldout)
    pharmacy = json.loads(ok("schema", "pharmacy.prescriptions", "-f", f, "--format", "json"))
    assert pharmacy["rows"] == [
        ["patient_id", "BIGINT", "key", 0, None, None],
        ["drug_class", "VARCHAR", "group", 0, None, None],  # no public domain
        ["price", "DOUBLE", "value", 2, [0.0, 999.99], None],
        ["quantity", "BIGINT", "value", 0, [1, 12], None],
    ]
    lab = json.loads(ok("schema", "lab.results", "-f", f, "--format", "json"))
    assert lab["rows"] == [
        ["patient_id", "BIGINT", "key", 0, None, None],
        ["test_code", "VARCHAR", "group", 0, None, ["HBA1C", "LDL", "TSH"]],
        ["result_value", "DOUBLE", "value", 3, [0, 50], None],
        ["abnormal", "BOOLEAN", "value", 0, [0, 1], None],
    ]
    assert (lab["join_reveal"], lab["max_rows_per_unit"]) == ("none", 5)


@pytest.mark.parametrize(
    ("target", "message", "hint"),
    [
        ("hospital.staff", "party 'hospital' shares no table 'staff'", "without a policy"),
        ("hospital.admision", "shares no table 'admision'", "did you mean 'admissions'"),
        ("hospital", "expected PARTY.TABLE, got 'hospital'", "hospital.admissions"[:0]),
        ("clinic.admissions", "no party 'clinic'", "parties are: hospital, pharmacy, lab"),
        ("hospital.admissions.ward", "expected PARTY.TABLE", "<party>.<table>"),
    ],
)
def test_schema_errors(heldout: Path, target: str, message: str, hint: str) -> None:
    """Unknown or unusable tables exit 2 with a hint; stdout stays empty."""
    result = veil("schema", target, "-f", str(heldout))
    assert result.exit_code == 2
    assert result.stdout == ""
    first, second = result.stderr.splitlines()
    assert first.startswith("veil: error: ") and message in first
    assert second.startswith("hint: ") and hint in second


# ---- usage, version, help ----------------------------------------------------------------


def test_version_and_help() -> None:
    """--version prints the version; --help lists every command and the exit codes."""
    assert ok("--version") == f"veil {__version__}\n"
    text = ok("--help")
    for command in ("parties", "tables", "schema", "demo"):
        assert f"  {command} " in text
    assert "4 privacy budget exceeded" in text
    assert "--format [table|json|jsonl|csv]" in ok("schema", "--help")
    assert "-f, --federation FILE" in ok("tables", "-h")


def test_bare_veil_prints_help_on_stderr() -> None:
    """`veil` alone shows the help (not as an error line), stdout empty, exit 2."""
    result = veil()
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Usage: veil ") and "veil: error" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["parties", "--format", "xml"],
        ["tables", "--bogus"],
        ["schema"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(args: list[str], heldout: Path) -> None:
    """Click usage errors exit 2 in the same `veil: error:` form, nothing on stdout."""
    result = veil(*args, "-f", str(heldout))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("veil: error: ")
    assert "\nhint: see 'veil" in result.stderr


def test_no_color_output_is_plain(heldout: Path) -> None:
    """No escape sequences, with or without NO_COLOR."""
    plain = ok("tables", "-f", str(heldout))
    assert "\x1b" not in plain
    assert ok("tables", "-f", str(heldout), env={"NO_COLOR": "1"}) == plain


# ---- discovery ---------------------------------------------------------------------------


def _party_names(out: str) -> list[str]:
    return [row[0] for row in json.loads(out)["rows"]]


def test_discovery_order(
    heldout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_fed: object
) -> None:
    """-f, else $VEIL_FEDERATION, else ./federation.toml, else the bundled sample."""
    mini = tmp_path / "federation.toml"  # mini_fed lives in tmp_path
    assert mini.is_file()
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert find_federation(None) == mini
    assert _party_names(ok("parties", "--format", "json")) == ["shop", "club"]

    monkeypatch.setenv(ENV_VAR, str(heldout))
    assert find_federation(None) == heldout
    assert _party_names(ok("parties", "--format", "json")) == ["hospital", "pharmacy", "lab"]

    assert find_federation(str(mini)) == mini  # -f beats the environment
    assert _party_names(ok("parties", "-f", str(mini), "--format", "json")) == ["shop", "club"]
    assert find_federation(str(tmp_path)) == mini  # a folder holding federation.toml

    monkeypatch.delenv(ENV_VAR)
    monkeypatch.chdir(elsewhere)
    sample = bundled_sample()
    if sample is None:
        with pytest.raises(ConfigError, match="no federation file found"):
            find_federation(None)
    else:
        assert find_federation(None) == sample
        assert sample.parts[-3:] == ("sample_data", "demo", "federation.toml")


def test_named_federation_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_fed: object
) -> None:
    """A missing file named by -f or $VEIL_FEDERATION never falls through to another one."""
    monkeypatch.chdir(tmp_path)  # holds a valid federation.toml
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "typo.toml"))
    result = veil("parties")
    assert result.exit_code == 2 and result.stdout == ""
    assert "typo.toml" in result.stderr and f"${ENV_VAR}" in result.stderr
    with pytest.raises(ConfigError, match="-f/--federation"):
        find_federation(str(tmp_path / "other.toml"))


# ---- demo --------------------------------------------------------------------------------


def test_demo_describes_a_federation(heldout: Path) -> None:
    """`veil demo -f F` prints every party, table and column policy."""
    out = ok("demo", "-f", str(heldout))
    assert out.startswith("Federation 'regional-health': 3 parties, analysts: epi_team, auditor\n")
    for text in (
        "hospital (compute + data party, local,",
        "hospital.admissions: privacy unit "
        "patient_id, at most 4 row(s) per unit, join_reveal = intersection",
        "pharmacy.prescriptions",
        "lab.results",
        "result_value  DOUBLE",
    ):
        assert text in out
    assert "staff" not in out and "notes" not in out


def test_demo_uses_bundled_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -f, demo shows the bundled sample (ignoring ./federation.toml)."""
    monkeypatch.chdir(tmp_path)
    if bundled_sample() is None:
        pytest.skip("the bundled sample federation is not present")
    out = ok("demo")
    assert out.startswith("Federation ")
    assert "(compute + data party" in out


def test_fourth_party_is_not_compute(heldout: Path, tmp_path: Path) -> None:
    """Only the first three parties run the secure computation."""
    root = tmp_path / "fed"
    shutil.copytree(heldout.parent, root)
    fed = root / "federation.toml"
    fed.write_text(
        fed.read_text() + '\n[[party]]\nname = "lab2"\naddress = "local"\n'
        'connector = "parquet:data/lab"\n'
    )
    shutil.copy(root / "rules" / "lab.toml", root / "rules" / "lab2.toml")
    rows = json.loads(ok("parties", "-f", str(fed), "--format", "json"))["rows"]
    assert [(r[0], r[4]) for r in rows] == [
        ("hospital", True),
        ("pharmacy", True),
        ("lab", True),
        ("lab2", False),
    ]


# ---- formats (shared with query results) -------------------------------------------------


def test_render_values_and_meta() -> None:
    """Decimals, NaN, None and nested lists render per format; meta only in json."""
    import decimal

    import numpy as np

    from veilql.errors import UsageError

    cols = ["g", "n", "x"]
    rows = [["a", decimal.Decimal("2.50"), float("nan")], ["b", np.int64(3), None]]
    meta = {"accuracy": {"n": {"ci95": 2.9}}}
    assert json.loads(render(cols, rows, "json", meta=meta)) == {
        "columns": cols,
        "rows": [["a", 2.5, None], ["b", 3, None]],
        "accuracy": {"n": {"ci95": 2.9}},
    }
    assert render(cols, rows, "csv") == "g,n,x\na,2.50,nan\nb,3,"
    assert render(cols, rows, "jsonl").splitlines()[1] == '{"g": "b", "n": 3, "x": null}'
    assert render(cols, rows, "table").splitlines() == [
        "g     n     x",
        "-  ----  ----",
        "a  2.50   nan",
        "b     3  NULL",
    ]
    assert render(cols, [], "table") == "g  n  x\n-  -  -"
    assert render(cols, [], "jsonl") == ""
    with pytest.raises(UsageError, match="unknown output format 'xml'"):
        render(cols, rows, "xml")
    with pytest.raises(ValueError, match="would overwrite"):
        render(cols, rows, "json", meta={"rows": []})
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        render(cols, [["a", 1]], "csv")


def test_a_dimension_table_says_so(tmp_path: Path) -> None:
    """A table without personal data shows kind `dimension` and null unit fields, not an
    empty privacy unit; `veil schema` says `dimension: true` with its row cap."""
    import bi_fixtures

    f = str(bi_fixtures.build(tmp_path))
    rows = json.loads(ok("tables", "beta", "-f", f, "--format", "json"))["rows"]
    merchants = next(r for r in rows if r[1] == "merchants")
    assert merchants[2:5] == [None, None, None]
    assert merchants[6].startswith("dimension (at most ")
    assert all(r[6] == "personal" for r in rows if r[1] != "merchants")
    meta = json.loads(ok("schema", "beta.merchants", "-f", f, "--format", "json"))
    assert meta["dimension"] is True and "privacy_unit" not in meta
    assert isinstance(meta["max_rows"], int)
