"""The README's table of operator settings is the one the code declares (``domain.config.setting``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvm_prelaunch_operator.settings import SETTINGS_CLASSES, OperatorSettings, load, render_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_is_generated_from_the_code() -> None:
    table = render_table()
    assert table in README.read_text(), (
        "the README's settings table differs from the code; regenerate it with: "
        'python -c "from cvm_prelaunch_operator.settings import render_table; print(render_table())"'
    )
    names = [line.split("`")[1] for line in table.splitlines()[2:]]
    assert len(names) == len(set(names)), "a variable is declared twice"
    assert len(SETTINGS_CLASSES) >= 4


def test_settings_read_the_environment_and_refuse_bad_values() -> None:
    settings, policy, chain = load(
        {"MAX_CONCURRENT_RECONCILES": "4", "OPERATION_TIMEOUT": "90s", "MAX_FEE_PER_GAS_GWEI": "0.5"}
    )
    assert settings.workers == 4 and policy.operation_timeout == 90.0 and chain.max_fee_per_gas == 500_000_000
    assert OperatorSettings.from_env({}).leader_election is True
    with pytest.raises(ValueError, match="MAX_CONCURRENT_RECONCILES must be at least 1"):
        load({"MAX_CONCURRENT_RECONCILES": "0"})
    with pytest.raises(ValueError, match="OPERATION_TIMEOUT"):
        load({"OPERATION_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        OperatorSettings.from_env({"LOG_FORMAT": "xml"})
